// An ESM consumer: imports every package named on the command line and
// prints one line per package. Exits 1 naming each package that fails.
let failed = 0;
for (const name of process.argv.slice(2)) {
  try {
    const exports = Object.keys(await import(name));
    if (exports.length === 0) throw new Error('it has no exports');
    console.log(`import ${name}: ${exports.join(' ')}`);
  } catch (err) {
    failed++;
    console.error(`import ${name} failed: ${err?.code ? `${err.code} ` : ''}${err?.message}`);
  }
}
process.exitCode = failed ? 1 : 0;
