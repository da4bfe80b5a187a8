"""Print the requirements of dapo and the named extras, from pyproject.toml, one a line.

Images install these before copying the source, so that a change in the code reuses the layer that
holds the (large) dependencies. Usage: python3 requirements.py [EXTRA ...] > requirements.txt
"""

import re
import sys

import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project.get("optional-dependencies", {})


def expand(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in extras:
            sys.exit(f"requirements.py: no extra {name!r} in pyproject.toml (have: {', '.join(extras)})")
        for req in extras[name]:
            own = re.fullmatch(r"dapo\[([\w,\s-]+)\]", req)
            out += expand([n.strip() for n in own.group(1).split(",")]) if own else [req]
    return out


print("\n".join(dict.fromkeys(project["dependencies"] + expand(sys.argv[1:]))))
