// Verifies a Palisade webhook in Node (18+), with no dependency: the signature over the raw
// body, compared in constant time, and the timestamp within a tolerance (replays).
//
//   import { verifyPalisade } from "./verify.mjs";
//   app.post("/hooks", express.raw({ type: "application/json" }), (req, res) => {
//     if (!verifyPalisade(req.body, req.get("palisade-signature"), process.env.WEBHOOK_SECRET)) {
//       return res.sendStatus(400);
//     }
//     for (const event of JSON.parse(req.body).events) { /* skip ids already seen */ }
//     res.sendStatus(204);
//   });
import { createHmac, timingSafeEqual } from "node:crypto";

export function verifyPalisade(rawBody, header, secret, toleranceSecs = 300, now = Date.now()) {
  if (typeof header !== "string") return false;
  const parts = Object.fromEntries(header.split(",").map((part) => part.split("=", 2)));
  const timestamp = Number(parts.t);
  if (!Number.isInteger(timestamp) || !parts.v1) return false;
  if (Math.abs(now / 1000 - timestamp) > toleranceSecs) return false;
  const expected = createHmac("sha256", secret)
    .update(`${timestamp}.`)
    .update(rawBody)
    .digest();
  const given = Buffer.from(parts.v1, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

// `node verify.mjs <signature header> <body file> <secret>`: exits 0 if it verifies.
if (import.meta.url === `file://${process.argv[1]}`) {
  const { readFileSync } = await import("node:fs");
  const [header, bodyFile, secret] = process.argv.slice(2);
  process.exit(verifyPalisade(readFileSync(bodyFile), header, secret) ? 0 : 1);
}
