// A queue of tasks, each run under a beat budget, reporting progress in a status claim every
// beat: `executing` with progress and beats_left, then `completed`, or `failed` when the budget
// runs out. `deno run -A examples/task_processor.ts [--seconds N]`
import { BeatBudgetExceededError, Client, defaultConfig } from "../mod.ts";
import { exampleEnv, sleep } from "./_example_env.ts";

interface Task {
  id: string;
  /** Work steps of 100 ms each. */
  steps: number;
  /** Beats the task may take. */
  budget: number;
}

const env = await exampleEnv("chorus-dev", 300);
console.log(`task_processor: following ${env.description}`);

const config = defaultConfig();
config.clusterId = "chorus-dev";
config.agentId = "task-processor";
Object.assign(config, env.transport);
const client = new Client(config);

// What the beat callback reports: the task in hand and how far it got.
let current: { task: Task; done: number } | undefined;
client.onBeat(async (beat, info) => {
  if (!current) return;
  const { task, done } = current;
  const progress = done / task.steps;
  const beatsLeft = Math.ceil(((task.steps - done) * 100) / (60_000 / beat.tempo_bpm));
  console.log(
    `beat ${beat.beat_index}${info.synthetic ? " (synthetic)" : ""}: ${task.id} ` +
      `${Math.round(progress * 100)}% (about ${beatsLeft} beats left)`,
  );
  await client.emitStatusClaim({
    state: "executing",
    task_id: task.id,
    progress,
    beats_left: beatsLeft,
    notes: `step ${done}/${task.steps}`,
  });
});
await client.start(env.signal);

const queue: Task[] = [];
for (let i = 1; i <= 100; i++) {
  // At 300 BPM a beat is 200 ms: a task of n steps needs about n/2 beats.
  const steps = 4 + Math.floor(Math.random() * 12);
  queue.push({ id: `task-${i}`, steps, budget: 5 });
}

let completed = 0;
let failed = 0;
for (const task of queue) {
  if (env.signal.aborted) break;
  current = { task, done: 0 };
  try {
    await client.withBeatBudget(task.budget, async (signal) => {
      const stop = AbortSignal.any([signal, env.signal]);
      for (let step = 1; step <= task.steps; step++) {
        await sleep(100, stop);
        stop.throwIfAborted();
        current!.done = step;
      }
    });
    completed++;
    console.log(`${task.id}: completed ${task.steps} steps within ${task.budget} beats`);
    await client.emitStatusClaim({ state: "completed", task_id: task.id, progress: 1 });
  } catch (error) {
    if (env.signal.aborted) break;
    if (!(error instanceof BeatBudgetExceededError)) throw error;
    failed++;
    console.log(`${task.id}: ${error.message} at step ${current.done}/${task.steps}`);
    await client.emitStatusClaim({
      state: "failed",
      task_id: task.id,
      progress: current.done / task.steps,
      notes: error.message,
    });
  } finally {
    current = undefined;
  }
}

const h = client.health();
console.log(
  `tasks: ${completed} completed, ${failed} over budget; claims sent ${h.claimsSent}, ` +
    `callback errors ${h.callbackErrors}`,
);
await client.stop();
await env.close();
