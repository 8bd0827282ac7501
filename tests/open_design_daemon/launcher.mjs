// Start the open-design daemon's own HTTP server, unmodified, for tests/open_design_daemon.
//
//   node launcher.mjs CHECKOUT_DIR READY_FILE
//
// Imports CHECKOUT_DIR/apps/daemon/dist/server.js (a built checkout of the daemon, see
// scripts/open-design-daemon.sh) and calls its exported startServer() on 127.0.0.1 with an
// ephemeral port. The data dir is OD_DATA_DIR from the environment (the daemon reads it when its
// module loads). Once the server listens, writes {"url", "pid"} as JSON to READY_FILE (the
// daemon logs to stdout, so the address goes to a file of its own); on SIGTERM or SIGINT it runs the daemon's own shutdown (which stops its runs) and closes the server.
import { renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [checkout, readyFile] = process.argv.slice(2);
if (!checkout || !readyFile) {
  console.error('usage: node launcher.mjs CHECKOUT_DIR READY_FILE');
  process.exit(2);
}
const serverModule = path.resolve(checkout, 'apps', 'daemon', 'dist', 'server.js');
const { startServer } = await import(pathToFileURL(serverModule).href);
const started = await startServer({ port: 0, host: '127.0.0.1', returnServer: true });
writeFileSync(`${readyFile}.tmp`, JSON.stringify({ url: started.url, pid: process.pid }));
renameSync(`${readyFile}.tmp`, readyFile);

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  const hard = setTimeout(() => process.exit(1), 10_000);
  hard.unref();
  try {
    await started.shutdown?.();
  } catch (error) {
    console.error(`launcher: daemon shutdown failed on ${signal}:`, error);
  }
  started.server.closeAllConnections?.();
  started.server.close(() => process.exit(0));
}
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
