/**
 * The layout check: folders depend downward only, no `_` file is imported from outside its
 * folder, and no import cycle exists between files. Reads the module graph from
 * `deno info --json`, so it sees exactly what Deno resolves (static, dynamic and type imports).
 *
 * Run it as `deno task check:layout`; the test task does.
 *
 * @module
 */

import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** The layer of each library folder: a folder may import only folders of a lower layer. */
export const LAYERS: Readonly<Record<string, number>> = {
  core: 0,
  nats: 1,
  schemas: 1,
  sdk: 2,
  service: 2,
  testing: 3,
  pulse: 3,
  reverb: 3,
  // The backbeat operator tool (uses pulse's control message helper).
  cli: 4,
  // Top-level files: mod.ts, cli.ts (cli.ts is a thin entry over cli/, so one layer above it).
  ".": 5,
};

/** Folders outside the library: they may import any folder, but no folder imports them. */
export const OUTSIDE: ReadonlySet<string> = new Set(["examples", "bench", "tests", "tools"]);

/** One import edge between two project files (paths relative to the project root). */
export interface Edge {
  /** The importing file. */
  readonly from: string;
  /** The imported file. */
  readonly to: string;
}

/** A broken rule, as one sentence. */
export type Violation = string;

/**
 * The folder a project file belongs to: its first path segment, or `.` at the top.
 *
 * @param path A path relative to the project root, with `/` separators.
 * @returns The folder.
 *
 * @example Folders of files
 * ```ts ignore
 * folderOf("core/_bus.ts"); // "core"
 * folderOf("mod.ts"); // "."
 * ```
 */
export function folderOf(path: string): string {
  const i = path.indexOf("/");
  return i < 0 ? "." : path.slice(0, i);
}

function baseName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/**
 * Checks a module graph against the layout rules.
 *
 * @param files Every project file in the graph.
 * @param edges Every import between them.
 * @returns The violations, sorted; empty when the layout holds.
 *
 * @example An upward import
 * ```ts ignore
 * checkLayout(["core/a.ts", "sdk/mod.ts"], [{ from: "core/a.ts", to: "sdk/mod.ts" }]);
 * // ["core/a.ts imports sdk/mod.ts: core/ may import only folders below it, not sdk/"]
 * ```
 */
export function checkLayout(files: readonly string[], edges: readonly Edge[]): Violation[] {
  const out: Violation[] = [];
  for (const { from, to } of edges) {
    const a = folderOf(from);
    const b = folderOf(to);
    if (a === b) continue;
    if (baseName(to).startsWith("_")) {
      out.push(`${from} imports ${to}, a file private to ${b}/ (use ${b}/mod.ts)`);
      continue;
    }
    if (OUTSIDE.has(a)) continue;
    // A test beside its code may use the shared test kits.
    if (from.endsWith("_test.ts") && (OUTSIDE.has(b) || b === "testing")) continue;
    if (OUTSIDE.has(b)) {
      out.push(`${from} imports ${to}: library code must not depend on ${b}/`);
      continue;
    }
    const la = LAYERS[a];
    const lb = LAYERS[b];
    if (la === undefined) {
      out.push(`${from} is in ${a}/, a folder the layout does not know (add it to LAYERS)`);
    } else if (lb === undefined) {
      out.push(`${from} imports ${to} in ${b}/, a folder the layout does not know`);
    } else if (lb >= la) {
      out.push(`${from} imports ${to}: ${a}/ may import only folders below it, not ${b}/`);
    }
  }
  for (const component of findCycles(files, edges)) {
    const path = cycleThrough(component, edges);
    const more = component.length > path.length
      ? ` (one of ${component.length} files that import each other: ${component.join(", ")})`
      : "";
    out.push(`import cycle: ${[...path, path[0]].join(" -> ")}${more}`);
  }
  return [...new Set(out)].sort();
}

/**
 * A shortest real import path from a component's first file back to it. The component's files
 * in search order need not import each other in that order once the component is more than one
 * simple cycle.
 */
function cycleThrough(component: readonly string[], edges: readonly Edge[]): string[] {
  const inside = new Set(component);
  const start = component[0];
  const cameFrom = new Map<string, string>();
  const queue = [start];
  for (let i = 0; i < queue.length; i++) {
    const node = queue[i];
    for (const { from, to } of edges) {
      if (from !== node || !inside.has(to)) continue;
      if (to === start) {
        const path = [node];
        for (let n = node; n !== start;) path.push(n = cameFrom.get(n)!);
        return path.reverse();
      }
      if (!cameFrom.has(to)) {
        cameFrom.set(to, node);
        queue.push(to);
      }
    }
  }
  return [...component]; // unreachable for a strongly connected component
}

/**
 * Finds the import cycles of a graph (Tarjan's strongly connected components): each cycle is
 * reported once, as the files of one component.
 *
 * @param files The nodes.
 * @param edges The edges.
 * @returns One list of files per cycle (a component of files that reach each other), in the
 * order the search met them.
 *
 * @example A two-file cycle
 * ```ts ignore
 * findCycles(["a.ts", "b.ts"], [{ from: "a.ts", to: "b.ts" }, { from: "b.ts", to: "a.ts" }]);
 * // [["a.ts", "b.ts"]]
 * ```
 */
export function findCycles(files: readonly string[], edges: readonly Edge[]): string[][] {
  const next = new Map<string, string[]>();
  for (const f of files) next.set(f, []);
  for (const { from, to } of edges) {
    if (!next.has(from)) next.set(from, []);
    if (!next.has(to)) next.set(to, []);
    next.get(from)!.push(to);
  }
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let counter = 0;
  // Iterative, so a deep graph cannot overflow the call stack.
  for (const root of next.keys()) {
    if (index.has(root)) continue;
    const work: { node: string; i: number }[] = [{ node: root, i: 0 }];
    index.set(root, counter);
    low.set(root, counter++);
    stack.push(root);
    onStack.add(root);
    while (work.length > 0) {
      const top = work[work.length - 1];
      const succ = next.get(top.node)!;
      if (top.i < succ.length) {
        const w = succ[top.i++];
        if (!index.has(w)) {
          index.set(w, counter);
          low.set(w, counter++);
          stack.push(w);
          onStack.add(w);
          work.push({ node: w, i: 0 });
        } else if (onStack.has(w)) {
          low.set(top.node, Math.min(low.get(top.node)!, index.get(w)!));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1].node;
        low.set(parent, Math.min(low.get(parent)!, low.get(top.node)!));
      }
      if (low.get(top.node) === index.get(top.node)) {
        const component: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          component.push(w);
        } while (w !== top.node);
        const selfLoop = component.length === 1 && succ.includes(top.node);
        if (component.length > 1 || selfLoop) cycles.push(component.reverse());
      }
    }
  }
  return cycles;
}

interface InfoDependency {
  code?: { specifier?: string };
  type?: { specifier?: string };
}
interface InfoModule {
  specifier: string;
  dependencies?: InfoDependency[];
}

/**
 * Reads the module graph of a project from `deno info --json`: every `.ts` file under `root`
 * (outside `.git`, `node_modules` and `dist`) is a root of the graph. The project's `deno.json`
 * is used when there is one (with `--frozen`, so the lockfile is never rewritten), no config
 * otherwise.
 *
 * @param root The project folder (absolute).
 * @returns Its files and the imports between them, each edge once.
 * @throws {Error} When `deno info` fails.
 *
 * @example Check the project in the working directory
 * ```ts ignore
 * const { files, edges } = await readGraph(Deno.cwd());
 * console.log(checkLayout(files, edges));
 * ```
 */
export async function readGraph(root: string): Promise<{ files: string[]; edges: Edge[] }> {
  const files: string[] = [];
  const walk = async (dir: string, rel: string): Promise<void> => {
    for await (const e of Deno.readDir(dir)) {
      if (e.name === ".git" || e.name === "node_modules" || e.name === "dist") continue;
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) await walk(`${dir}/${e.name}`, path);
      else if (e.isFile && e.name.endsWith(".ts")) files.push(path);
    }
  };
  await walk(root, "");
  files.sort();
  const entry = await Deno.makeTempFile({ prefix: "backbeat-layout-", suffix: ".ts" });
  try {
    // pathToFileURL percent-encodes what a URL cannot hold (spaces, `#`, `%`) in file names.
    const prefix = pathToFileURL(root.endsWith("/") ? root : `${root}/`).href;
    const url = (f: string) => pathToFileURL(join(root, f)).href;
    await Deno.writeTextFile(
      entry,
      files.map((f) => `import ${JSON.stringify(url(f))};\n`).join(""),
    );
    const config = join(root, "deno.json");
    const hasConfig = await Deno.stat(config).then(() => true, () => false);
    const args = ["info", "--json", "--quiet"];
    args.push(...(hasConfig ? ["--frozen", "--config", config] : ["--no-config"]), entry);
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr).slice(0, 2000)}`);
    }
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    const rel = (s: string | undefined) =>
      s !== undefined && s.startsWith(prefix) ? decodeURIComponent(s.slice(prefix.length)) : "";
    // A dependency can name the same file as code and as types; keep one edge.
    const seen = new Set<string>();
    const edges: Edge[] = [];
    for (const m of info.modules) {
      const from = rel(m.specifier);
      if (!from) continue;
      for (const d of m.dependencies ?? []) {
        for (const target of [d.code?.specifier, d.type?.specifier]) {
          const to = rel(target);
          // A self-import is an edge too: findCycles reports it as a cycle of one.
          if (!to || seen.has(`${from}\0${to}`)) continue;
          seen.add(`${from}\0${to}`);
          edges.push({ from, to });
        }
      }
    }
    return { files, edges };
  } finally {
    await Deno.remove(entry).catch(() => {});
  }
}

if (import.meta.main) {
  const root = Deno.args[0] ?? Deno.cwd();
  const { files, edges } = await readGraph(root);
  const violations = checkLayout(files, edges);
  if (violations.length > 0) {
    for (const v of violations) console.error(`layout: ${v}`);
    console.error(`layout: ${violations.length} violation(s) in ${files.length} files`);
    Deno.exit(1);
  }
  console.log(`layout: ok (${files.length} files, ${edges.length} imports)`);
}
