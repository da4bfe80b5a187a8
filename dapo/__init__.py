"""dapo: DAPO reinforcement-learning post-training as cooperating services.

The library part (`dapo.config`, `dapo.algo`, `dapo.batch`, `dapo.weights`, the gRPC stubs in
`dapo.v1`) imports without services running; only `dapo.algo` and the model helpers need torch.
"""

__version__ = "0.1.0"
