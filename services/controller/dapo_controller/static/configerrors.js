// Map the API's 422 validation errors (`{loc, msg}`) onto what the user typed: a line of the pasted
// YAML, the run name, or one of the overrides. YAML is scanned line by line for block-style keys,
// which is how run configs are written; an error whose field is not in the text (a missing key)
// lands on its nearest parent that is, and one that names no field on the first line.

const KEY_LINE = /^(\s*)((?:-\s+)*)(["']?)([^"'#:{}[\],\s][^"'#:{}[\],]*?)\3\s*:(?:\s|$)/;

/** {"a.b.c": line index} for every block-style key of `text` (first occurrence wins). */
export function yamlKeyLines(text) {
  const lines = {};
  const stack = [];
  text.split("\n").forEach((line, i) => {
    const m = KEY_LINE.exec(line);
    if (!m) return;
    const indent = m[1].length + m[2].length;
    while (stack.length && stack[stack.length - 1].indent >= indent) stack.pop();
    stack.push({ indent, key: m[4].trim() });
    const path = stack.map((s) => s.key).join(".");
    if (!(path in lines)) lines[path] = i;
  });
  return lines;
}

/** Field path of an error inside the config, without the request envelope (`body`, `config`). */
export function configPath(loc) {
  let parts = (loc || []).slice();
  if (parts[0] === "body") parts = parts.slice(1);
  if (parts[0] === "config" || parts[0] === "config_yaml") parts = parts.slice(1);
  return parts.filter((p) => typeof p === "string");
}

/** Where an error belongs: {field: "name"|"overrides"|"config", line: index or null, exact: bool}. */
export function placeError(error, yamlText, overridesText) {
  const loc = error.loc || [];
  const top = loc[0] === "body" ? loc[1] : loc[0];
  const msg = String(error.msg ?? "");
  if (top === "name") return { field: "name", line: null, exact: true };
  if (top === "overrides") {
    const index = loc.find((p) => typeof p === "number");
    return { field: "overrides", line: index ?? null, exact: index != null };
  }
  // A malformed override names itself in the message: `override 'x' must look like section.key=value`.
  const quoted = /^override '([^']*)'/.exec(msg);
  if (quoted) {
    const index = overridesText.split("\n").findIndex((l) => l.trim() === quoted[1].trim());
    return { field: "overrides", line: index >= 0 ? index : null, exact: index >= 0 };
  }
  const keyLines = yamlKeyLines(yamlText);
  let path = configPath(loc);
  // A YAML syntax error names its line in the message.
  const lineMatch = /line (\d+)/.exec(msg);
  if (path.length === 0 && lineMatch) {
    return { field: "config", line: Number(lineMatch[1]) - 1, exact: true };
  }
  // Cross-field rules raise with no location but name their fields in the message.
  if (path.length === 0) {
    for (const m of msg.matchAll(/\b([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\b/g)) {
      if (m[1] in keyLines) return { field: "config", line: keyLines[m[1]], exact: true };
    }
  }
  const dotted = path.join(".");
  // A key set through an override rather than the YAML.
  const overrideLine = overridesText
    .split("\n")
    .findIndex((l) => l.trim().startsWith(`${dotted}=`) || l.trim().startsWith(`${dotted} =`));
  if (dotted && overrideLine >= 0 && !(dotted in keyLines)) {
    return { field: "overrides", line: overrideLine, exact: true };
  }
  for (let n = path.length; n > 0; n--) {
    const prefix = path.slice(0, n).join(".");
    if (prefix in keyLines) return { field: "config", line: keyLines[prefix], exact: n === path.length };
  }
  return { field: "config", line: null, exact: false };
}

/** Readable field name of an error: `grpo.ratio_clip_mx`, or the envelope field. */
export function fieldLabel(error) {
  const path = configPath(error.loc);
  if (path.length) return path.join(".");
  const loc = (error.loc || []).filter((p) => p !== "body");
  return loc.length ? loc.join(".") : "config";
}

/** The error as one line: the message, prefixed by its field unless the message already names it. */
export function describeError(error) {
  const label = fieldLabel(error);
  const msg = String(error.msg ?? "");
  return msg.includes(label) || label === "config" || label === "body" ? msg : `${label}: ${msg}`;
}
