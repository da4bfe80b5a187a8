// The controller's public REST API, as the page uses it. URLs are relative to the page, so the
// dashboard also works behind a reverse proxy that serves the controller under a path prefix.

const TOKEN_KEY = "dapo.apiToken";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

let askToken = async () => null;

/** Install the function that asks the user for the API token (resolves to a string, or null if cancelled). */
export function setTokenPrompt(fn) {
  askToken = fn;
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function send(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = storedToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

/** One API call; a 401 asks for the token once and retries. Throws ApiError with the body's `detail`. */
export async function request(method, path, body) {
  let response = await send(method, path, body);
  if (response.status === 401) {
    const hadToken = storedToken();
    const token = await askToken(hadToken ? "The API token was rejected." : "This controller needs an API token.");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      response = await send(method, path, body);
    }
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const detail = data && typeof data === "object" && "detail" in data ? data.detail : data;
    throw new ApiError(response.status, detail ?? response.statusText);
  }
  return data;
}

export const api = {
  listRuns: () => request("GET", "v1/runs"),
  getRun: (id) => request("GET", `v1/runs/${encodeURIComponent(id)}`),
  metrics: (id, since) =>
    request("GET", `v1/runs/${encodeURIComponent(id)}/metrics${since == null ? "" : `?since=${since}`}`),
  startRun: (payload) => request("POST", "v1/runs", payload),
  stopRun: (id) => request("POST", `v1/runs/${encodeURIComponent(id)}/stop`),
  eventsUrl: (id) => `v1/runs/${encodeURIComponent(id)}/events`,
};
