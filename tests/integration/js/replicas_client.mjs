// The TypeScript MCP SDK against N replicas: argv = token, url1, url2, url3.
// A handshake session opened on replica 1 continues on replicas 2 and 3 (same Mcp-Session-Id,
// no new initialize); a container made on 1 is used on the others by container_id.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [token, ...urls] = process.argv.slice(2);
const requestInit = { headers: { Authorization: `Bearer ${token}` } };
const out = { steps: [] };

async function bash(client, args) {
  const r = await client.callTool({ name: "bash_code_execution", arguments: args });
  return { stdout: r.structuredContent?.stdout, error: r.structuredContent?.error_code, container: r._meta?.container?.id };
}

const first = new Client({ name: "replicas-ts", version: "1.0.0" });
const t1 = new StreamableHTTPClientTransport(new URL(urls[0] + "/mcp"), { requestInit });
await first.connect(t1);
const sessionId = t1.sessionId;
const made = await bash(first, { command: "echo from-ts > /workspace/ts && cat /workspace/ts" });
out.steps.push({ replica: 0, ...made });

for (let i = 1; i < urls.length; i++) {
  // the same session on another replica: the transport carries the id, connect() skips initialize
  const c = new Client({ name: "replicas-ts", version: "1.0.0" });
  const t = new StreamableHTTPClientTransport(new URL(urls[i] + "/mcp"), { requestInit, sessionId });
  await c.connect(t);
  out.steps.push({ replica: i, session: true, ...(await bash(c, { command: "cat /workspace/ts" })) });
  out.steps.push({ replica: i, by_id: true, ...(await bash(c, { command: "cat /workspace/ts", container_id: made.container })) });
  await c.close();
}
await t1.terminateSession();
await first.close();
out.sessionId = sessionId;
console.log(JSON.stringify(out));
