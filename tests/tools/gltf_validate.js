// Prints the Khronos glTF validator's issue summary (JSON) of one .glb; run by tests/test_reconstruct.py
// where node and the npm package gltf-validator are present (MOFA_GLTF_VALIDATOR_DIR: its node_modules parent).
const validator = require('gltf-validator');
const fs = require('fs');
const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(bytes).then((report) => {
  console.log(JSON.stringify(report.issues));
}).catch((err) => { console.error(err); process.exit(2); });
