// `backbeat validate …`: the validator CLI (schemas/validate.ts runValidateCli) with the rest of
// the arguments, reading paths from the caller's directory. Its own prefix
// (`backbeat-validate:`) becomes this tool's (`backbeat validate:`) so every subcommand reports
// errors one way.

import { runValidateCli } from "../schemas/validate.ts";
import type { CliIo } from "./_io.ts";

/** A byte stream whose lines get `from` replaced by `to` where they start with it. */
function rewriting(
  target: WritableStream<Uint8Array>,
  rewrite: (line: string) => string,
): { stream: WritableStream<Uint8Array>; done: Promise<void> } {
  let buffered = "";
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const transform = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      buffered += decoder.decode(chunk, { stream: true });
      const end = buffered.lastIndexOf("\n");
      if (end < 0) return;
      const lines = buffered.slice(0, end + 1);
      buffered = buffered.slice(end + 1);
      controller.enqueue(encoder.encode(lines.split("\n").map(rewrite).join("\n")));
    },
    flush(controller) {
      buffered += decoder.decode();
      if (buffered) controller.enqueue(encoder.encode(rewrite(buffered)));
    },
  });
  // preventClose: the target is the caller's stream, which outlives this command.
  const done = transform.readable.pipeTo(target, { preventClose: true }).catch(() => {});
  return { stream: transform.writable, done };
}

/**
 * Runs the validator CLI with `args`.
 *
 * @param args The arguments after `validate`.
 * @param io The process.
 * @returns Its exit status: 0, 1 when invalid with `--exit-code` or nothing was found, 2 for a
 * bad command line.
 *
 * @example Validate a directory
 * ```ts ignore
 * const code = await runValidate(["--dir", "messages", "--exit-code"], io);
 * ```
 */
export async function runValidate(args: readonly string[], io: CliIo): Promise<number> {
  const rest = args[0] === "--" ? args.slice(1) : [...args];
  const help = rest.includes("-h") || rest.includes("--help");
  const err = rewriting(io.stderr, (l) => l.replace(/^backbeat-validate: /, "backbeat validate: "));
  // Only the help names the command; results may name files that contain the same words.
  const out = help
    ? rewriting(
      io.stdout,
      (l) =>
        l.replace(/^Usage:$/, "Usage (deno task backbeat validate ..., or the compiled binary):")
          .replaceAll("backbeat-validate", "backbeat validate"),
    )
    : undefined;
  try {
    return await runValidateCli(rest, {
      stdin: io.stdin,
      stdout: out?.stream ?? io.stdout,
      stderr: err.stream,
      cwd: io.cwd,
    });
  } finally {
    await err.stream.close();
    await out?.stream.close();
    await err.done;
    await out?.done;
  }
}
