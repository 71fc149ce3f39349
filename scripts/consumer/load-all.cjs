// A CommonJS consumer: require()s every package named on the command line
// (Node >= 20.19 loads ESM without top-level await this way) and prints one
// line per package. Exits 1 naming each package that cannot be required.
'use strict';

let failed = 0;
for (const name of process.argv.slice(2)) {
  try {
    const exports = Object.keys(require(name));
    if (exports.length === 0) throw new Error('it has no exports');
    console.log(`require ${name}: ${exports.join(' ')}`);
  } catch (err) {
    failed++;
    console.error(
      `require ${name} failed: ${err && err.code ? `${err.code} ` : ''}${err && err.message}`,
    );
  }
}
process.exitCode = failed ? 1 : 0;
