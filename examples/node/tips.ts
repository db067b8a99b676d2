// Calling tips-ml from TypeScript with the official nats.js client (v3):
// score -> publish feedback (JetStream, Nats-Msg-Id = event_id) -> generate,
// plus discovery ($SRV.INFO) and a typed error. Types follow docs/asyncapi.yaml.
//
//   npm ci && npm run build && NATS_URL=nats://127.0.0.1:4222 npm start
//
// Prints one JSON line per step (tests/service/test_client.py reads them).
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream } from "@nats-io/jetstream";

type ErrorCode =
  | "invalid_request" | "unknown_policy" | "unknown_prompt_version" | "not_found"
  | "forbidden" | "unavailable" | "timeout" | "internal";

interface ErrorReply { ok: false; error: { code: ErrorCode; message: string } }

interface ScoreRequest {
  user_id: string;
  policy?: string;
  arms?: string[];
  context?: {
    hour_of_day?: number; // 0-23
    day_of_week?: number; // 0-6, Monday = 0
    tasks?: { id?: string | number; title?: string; due?: string; priority?: number; overdue?: boolean }[];
  };
  profile_features?: Record<string, unknown>;
  request_id?: string;
}

interface ScoreReply {
  ok: true;
  decision_id: string;
  policy: string;
  policy_version: string;
  arm: string;
  propensity: number;
  explored: boolean;
  scores: Record<string, number>;
  feature_version: string;
  shadow: { policy: string; arm: string; propensity: number }[];
  fallback: boolean;
}

interface GenerateReply {
  ok: true;
  tip: string;
  prompt_version: string;
  model: string;
  source: "cache" | "llm" | "fallback";
  latency_ms: number;
  decision_id?: string;
}

class TipsError extends Error {
  constructor(readonly code: ErrorCode, message: string, readonly subject: string) {
    super(`${code}: ${message} (${subject})`);
  }
}

async function call<Req, Rep>(nc: NatsConnection, subject: string, req: Req,
                              timeout: number): Promise<Rep> {
  const msg = await nc.request(subject, JSON.stringify(req), { timeout });
  const body = msg.json<Rep | ErrorReply>();
  if ((body as ErrorReply).ok === false) {
    const { code, message } = (body as ErrorReply).error;
    throw new TipsError(code, message, subject);
  }
  return body as Rep;
}

function step(name: string, data: Record<string, unknown>): void {
  console.log(JSON.stringify({ step: name, ...data }));
}

async function main(): Promise<void> {
  const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222",
                             name: "tips-node-example" });
  const js = jetstream(nc);
  const userId = process.env.TIPS_USER ?? `node-${Date.now()}`;

  const info = (await nc.request("$SRV.INFO.tips-scorer", "", { timeout: 1000 })).json<{
    name: string; version: string; endpoints: { subject: string }[] }>();
  step("discover", { name: info.name, version: info.version,
                     subjects: info.endpoints.map((e) => e.subject) });

  const d = await call<ScoreRequest, ScoreReply>(nc, "tips.score", {
    user_id: userId,
    context: { hour_of_day: 9, day_of_week: 0, tasks: [{ id: 1, title: "write report", priority: 3 }] },
    profile_features: { completion_rate: 0.7 },
  }, 500);
  step("score", { decision_id: d.decision_id, arm: d.arm, propensity: d.propensity,
                  policy: d.policy });

  const eventId = `node-${d.decision_id}`;
  const feedback = JSON.stringify({ event_id: eventId, decision_id: d.decision_id,
                                    user_id: userId, reaction: "completed",
                                    ts: Date.now() / 1000 });
  const ack = await js.publish("feedback.completed", feedback, { msgID: eventId, timeout: 2000 });
  const again = await js.publish("feedback.completed", feedback, { msgID: eventId, timeout: 2000 });
  step("feedback", { event_id: eventId, stream: ack.stream, seq: ack.seq,
                     duplicate: ack.duplicate, resent_duplicate: again.duplicate });

  const g = await call<object, GenerateReply>(nc, "tips.generate", {
    user_id: userId, arm: d.arm, decision_id: d.decision_id }, 3000);
  step("generate", { tip: g.tip, source: g.source, prompt_version: g.prompt_version });

  try {
    await call<ScoreRequest, ScoreReply>(nc, "tips.score", { user_id: userId, policy: "nope" }, 500);
    step("error", { code: null });
  } catch (e) {
    if (!(e instanceof TipsError)) throw e;
    step("error", { code: e.code, message: e.message });
  }
  await nc.drain();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
