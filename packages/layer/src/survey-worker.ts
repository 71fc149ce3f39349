/**
 * A worker thread of {@link surveyLayers}: surveys the layers it is given
 * (`workerData`), posts the surveys as one message, and exits.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { surveyPacked } from './layer-survey.js';

const job = workerData as { osDir: string; names: string[] };
const packed = await surveyPacked(job.osDir, job.names);
parentPort!.postMessage(packed, [packed.numbers.buffer, packed.sharedNumbers.buffer]);
