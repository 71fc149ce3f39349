/**
 * A worker thread of {@link surveyLayers}: surveys the layers it is given
 * (`workerData`), posts the surveys as one message, and exits.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { surveyPacked } from './layer-survey.js';

const job = workerData as { osDir: string; names: string[] };
// No top-level await: the day11 command's bundle is CommonJS. A rejection is
// unhandled, so the worker dies with it and its parent sees the error.
void surveyPacked(job.osDir, job.names).then((packed) => {
  parentPort!.postMessage(packed, [packed.numbers.buffer, packed.sharedNumbers.buffer]);
});
