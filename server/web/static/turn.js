// One turn of a team over /stream_events, with what to do when the connection drops mid-stream.
import { ApiError } from "./api.js";
import { announce } from "./dom.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Send `text` as the next human message of the open session, calling onEvent for each stream event.
 * If the stream is cut, the turn may still finish on the server (it holds the session's turn lock), so the
 * session is read again until the reply is there; if it never comes, the error says so.
 */
export async function runTurn(ctx, text, onEvent) {
  const { api, session } = ctx;
  const before = session.transcript.length;
  try {
    await api.streamEvents(session.team, session.id, { messages: [{ type: "human", content: text }] }, onEvent);
  } catch (error) {
    if (!(error instanceof ApiError) || error.code !== "stream_lost") throw error;
    announce("The connection was lost while the reply was streaming; checking the session…", { sticky: true });
    for (let attempt = 0; attempt < 8; attempt += 1) {
      await sleep(1500);
      try {
        const now = await api.session(session.id);
        const added = now.transcript.slice(before);
        if (added.some((m) => m.role === "user") && added.some((m) => m.role === "assistant")) {
          announce("The connection dropped, but the reply was saved: it is shown from the server.");
          return;
        }
      } catch {
        // still offline: keep trying a few times
      }
    }
    throw new ApiError(0, "stream_lost", "The connection was lost and the reply did not arrive. Check your connection, then send your message again.");
  }
}

/** The final output of a graph node in a stream event, or null. */
export function nodeOutput(event, ...names) {
  if (event.event !== "on_chain_end" || !names.includes(event.name)) return null;
  const output = event.data && event.data.output;
  return output && typeof output === "object" ? output : null;
}
