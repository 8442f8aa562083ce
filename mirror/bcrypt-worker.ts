// bcrypt comparisons for client auth (auth.ts), off the mirror's main thread: bcryptjs is
// JavaScript, and a cost-10 comparison holds the thread it runs on for about 70 ms. On the main
// thread, 16 clients sending made-up credentials (no login is needed to send them) held requests
// with remembered credentials, and blob streams with them, back for 1 to 6 s.
import { parentPort } from 'node:worker_threads';
import bcrypt from 'bcryptjs';

export interface CompareRequest {
  id: number;
  password: string;
  hash: string;
}

export interface CompareAnswer {
  id: number;
  matches: boolean;
}

parentPort?.on('message', ({ id, password, hash }: CompareRequest) => {
  let matches = false;
  try {
    matches = bcrypt.compareSync(password, hash);
  } catch {
    // not a bcrypt hash: nothing matches it (the file's lines are checked when it is loaded)
  }
  parentPort!.postMessage({ id, matches } satisfies CompareAnswer);
});
