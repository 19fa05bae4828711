// node bench.mjs MODEL.gguf [threads]
// CPU-only llama.cpp reference timing via node-llama-cpp's prebuilt binaries (never builds/downloads).
import { getLlama, readGgufFileInfo, LlamaLogLevel } from "node-llama-cpp";
import fs from "node:fs";

const modelPath = process.argv[2];
const threads = Number(process.argv[3] ?? 2);
if (!modelPath) { console.error("usage: node bench.mjs MODEL.gguf [threads]"); process.exit(2); }

const logs = [];
const llama = await getLlama({
    gpu: false,
    build: "never",
    skipDownload: true,
    usePrebuiltBinaries: true,
    maxThreads: threads,             // cap the whole Llama instance at `threads`
    logLevel: LlamaLogLevel.debug,
    logger: (level, message) => {
        logs.push(`[${level}] ${message}`);
        if (level === "error" || level === "fatal" || level === "warn") process.stderr.write(`llama.cpp ${level}: ${message}`.trimEnd() + "\n");
    },
});

// which ggml CPU variant got dlopen'ed
const maps = fs.readFileSync("/proc/self/maps", "utf8");
const cpuLibs = [...new Set([...maps.matchAll(/\S*libggml-cpu[^\s]*\.so/g)].map(m => m[0]))];
const cpuVariant = cpuLibs.map(p => p.replace(/^.*libggml-cpu-?/, "").replace(/\.so$/, "")).join(",");
console.error(`binary: buildType=${llama.buildType} gpu=${llama.gpu} llamaCppRelease=${JSON.stringify(llama.llamaCppRelease)}`);
console.error(`ggml CPU libs mapped: ${cpuLibs.join(" ") || "(none found)"}`);
console.error(`load_backend logs: ${logs.filter(l => /backend|cpu/i.test(l)).map(l => l.trim()).join(" | ") || "(none)"}`);
console.error(`systemInfo: ${llama.systemInfo}`);
console.error(`cpuMathCores=${llama.cpuMathCores} maxThreads=${llama.maxThreads}`);

// vocab size from the GGUF header
const info = await readGgufFileInfo(modelPath, { logWarnings: false, ignoreKeys: [] });
const md = info.metadata;
let nVocab = md?.tokenizer?.ggml?.tokens?.length;
const arch = md?.general?.architecture;
if (!nVocab) nVocab = md?.[arch]?.vocab_size;
if (!nVocab) {
    const emb = info.tensorInfo?.find(t => t.name === "token_embd.weight");
    nVocab = emb ? Number(emb.dimensions[1]) : undefined;
}
console.error(`gguf: arch=${arch} n_vocab=${nVocab} file_type=${md?.general?.file_type} tensors=${info.tensorInfo?.length}`);

let model;
const tLoad0 = performance.now();
try {
    model = await llama.loadModel({ modelPath, gpuLayers: 0 });
} catch (e) {
    console.error("LOAD FAILED:", e?.message ?? e);
    const errs = logs.filter(l => /^\[(error|fatal|warn)\]/.test(l));
    console.error("llama.cpp error/warn logs:\n" + errs.join(""));
    console.log(JSON.stringify({ load_error: String(e?.message ?? e), llama_log_errors: errs.map(s => s.trim()), threads }));
    process.exit(1);
}
const loadS = (performance.now() - tLoad0) / 1000;
console.error(`model loaded in ${loadS.toFixed(2)} s; size=${model.size} trainCtx=${model.trainContextSize}`);

// deterministic PRNG (mulberry32), ids in [3, nVocab-1]
function rng(seed) { return () => { seed |= 0; seed = seed + 0x6D2B79F5 | 0; let t = Math.imul(seed ^ seed >>> 15, 1 | seed); t = t + Math.imul(t ^ t >>> 7, 61 | t) ^ t; return ((t ^ t >>> 14) >>> 0) / 4294967296; }; }
const rand = rng(12345);
const randTokens = n => Array.from({ length: n }, () => 3 + Math.floor(rand() * (nVocab - 3)));

// contention probe: system-wide busy CPU-seconds vs this process's CPU-seconds over a phase
const HZ = 100;
function sysBusy() { const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number); return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / HZ; }
function phaseStart() { return { sys: sysBusy(), me: process.cpuUsage(), t: performance.now() }; }
function phaseEnd(p) { const wall = (performance.now() - p.t) / 1000; const me = process.cpuUsage(p.me); const mine = (me.user + me.system) / 1e6; const sys = sysBusy() - p.sys; return { wall_s: +wall.toFixed(3), own_cpu_s: +mine.toFixed(2), other_cpu_s: +Math.max(0, sys - mine).toFixed(2) }; }
const contention = {};
const result = { prefill_tok_s: null, decode_tok_s: { "1": null, "8": null }, threads, llama_cpp_build: llama.llamaCppRelease, ggml_cpu_variant: cpuVariant || null };

// ---- batch 1: prefill 128, then 64 greedy decode steps ----
{
    const ctx = await model.createContext({ model, contextSize: 256, batchSize: 128, sequences: 1, threads: { ideal: threads, min: threads }, flashAttention: false });
    const seq = ctx.getSequence();
    console.error(`ctx1: contextSize=${ctx.contextSize} batchSize=${ctx.batchSize} idealThreads=${ctx.idealThreads} currentThreads=${ctx.currentThreads}`);
    const prompt = randTokens(128);

    // prefill: all 128 tokens in one batch, logits only for the last -> first generated token
    let ph = phaseStart();
    let t0 = performance.now();
    const out = await seq.controlledEvaluate([...prompt.slice(0, -1), [prompt.at(-1), { generateNext: { token: true } }]], { });
    const prefillS = (performance.now() - t0) / 1000;
    let next = out.at(-1)?.next?.token;
    result.prefill_tok_s = 128 / prefillS;
    contention.prefill = phaseEnd(ph);
    console.error(`prefill: 128 tok in ${prefillS.toFixed(3)} s, first token ${next}`);

    // decode: 64 single-token steps (each evaluates the previous token, samples greedily)
    const gen = [];
    ph = phaseStart();
    t0 = performance.now();
    for await (const tok of seq.evaluate([next], { temperature: 0 })) {
        gen.push(tok);
        if (gen.length >= 64) break;
    }
    const decS = (performance.now() - t0) / 1000;
    result.decode_tok_s["1"] = gen.length / decS;
    contention.decode1 = phaseEnd(ph);
    console.error(`decode b1: ${gen.length} steps in ${decS.toFixed(3)} s (currentThreads=${ctx.currentThreads}); first tokens ${gen.slice(0, 8).join(",")}`);
    await ctx.dispose();
}

// ---- batch 8: 8 sequences, 16-token prompts, 32 greedy tokens each, concurrently ----
{
    const ctx = await model.createContext({ model, contextSize: 64, sequences: 8, batchSize: 128, threads: { ideal: threads, min: threads }, flashAttention: false });
    console.error(`ctx8: contextSize/seq=${ctx.contextSize} sequences=${ctx.totalSequences} batchSize=${ctx.batchSize}`);
    const seqs = Array.from({ length: 8 }, () => ctx.getSequence());
    const prompts = seqs.map(() => randTokens(16));
    // prefill all 8 prompts concurrently (batched by the context), each returns its first token
    let t0 = performance.now();
    const firsts = await Promise.all(seqs.map((s, i) =>
        s.controlledEvaluate([...prompts[i].slice(0, -1), [prompts[i].at(-1), { generateNext: { token: true } }]]).then(o => o.at(-1).next.token)));
    console.error(`prefill b8: 128 tok in ${((performance.now() - t0) / 1000).toFixed(3)} s`);
    const ph = phaseStart();
    t0 = performance.now();
    const counts = await Promise.all(seqs.map(async (s, i) => {
        let n = 0;
        for await (const tok of s.evaluate([firsts[i]], { temperature: 0 })) { if (++n >= 32) break; }
        return n;
    }));
    const decS = (performance.now() - t0) / 1000;
    const total = counts.reduce((a, b) => a + b, 0);
    result.decode_tok_s["8"] = total / decS;
    contention.decode8 = phaseEnd(ph);
    console.error(`decode b8: ${total} tok (${counts.join(",")}) in ${decS.toFixed(3)} s`);
    await ctx.dispose();
}

for (const k of ["prefill_tok_s"]) result[k] = Math.round(result[k] * 100) / 100;
for (const k of ["1", "8"]) if (result.decode_tok_s[k] != null) result.decode_tok_s[k] = Math.round(result.decode_tok_s[k] * 100) / 100;
console.error("contention (other_cpu_s = CPU used by other processes during the phase):", JSON.stringify(contention));
result.contention = contention;
console.log(JSON.stringify(result));
await model.dispose();
await llama.dispose();
