/**
 * The layout check: folders depend downward only, no `_` file is imported from outside its
 * folder, and no import cycle exists between files. Reads the module graph from
 * `deno info --json`, so it sees exactly what Deno resolves (static, dynamic and type imports).
 *
 * Run it as `deno task check:layout`; the test task does.
 *
 * @module
 */

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
  // Top-level files: mod.ts, cli.ts.
  ".": 4,
};

/** Folders outside the library: they may import any folder, but no folder imports them. */
export const OUTSIDE: ReadonlySet<string> = new Set(["examples", "bench", "tests", "tools"]);

/** One import edge between two project files (paths relative to the project root). */
export interface Edge {
  readonly from: string;
  readonly to: string;
}

/** A broken rule, as one sentence. */
export type Violation = string;

/**
 * The folder a project file belongs to: its first path segment, or `.` at the top.
 *
 * @param path A path relative to the project root, with `/` separators.
 * @returns The folder.
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
  for (const cycle of findCycles(files, edges)) {
    out.push(`import cycle: ${[...cycle, cycle[0]].join(" -> ")}`);
  }
  return [...new Set(out)].sort();
}

/**
 * Finds the import cycles of a graph (Tarjan's strongly connected components): each cycle is
 * reported once, as the files of one component.
 *
 * @param files The nodes.
 * @param edges The edges.
 * @returns One list of files per cycle.
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
 * (outside `.git` and `node_modules`) is a root of the graph.
 *
 * @param root The project folder (absolute).
 * @returns Its files and the imports between them.
 * @throws {Error} When `deno info` fails.
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
    const base = new URL(`file://${root.endsWith("/") ? root : root + "/"}`);
    await Deno.writeTextFile(
      entry,
      files.map((f) => `import ${JSON.stringify(new URL(f, base).href)};\n`).join(""),
    );
    const args = ["info", "--json", "--quiet"];
    try {
      await Deno.stat(`${root}/deno.json`);
      args.push("--config", `${root}/deno.json`);
    } catch { /* no config */ }
    args.push(entry);
    const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
      .output();
    if (!out.success) {
      throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr).slice(0, 2000)}`);
    }
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    const prefix = base.href;
    const rel = (s: string | undefined) =>
      s !== undefined && s.startsWith(prefix) ? decodeURIComponent(s.slice(prefix.length)) : "";
    const edges: Edge[] = [];
    for (const m of info.modules) {
      const from = rel(m.specifier);
      if (!from) continue;
      for (const d of m.dependencies ?? []) {
        for (const target of [d.code?.specifier, d.type?.specifier]) {
          const to = rel(target);
          if (to && to !== from) edges.push({ from, to });
          else if (to && to === from) edges.push({ from, to });
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
