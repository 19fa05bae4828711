# Generates split.golden.jsonl (python3 gen_split_golden.py > split.golden.jsonl): pieces that the
# reference regexes (with look-ahead, Python's third-party `regex` module)
# give for random strings over characters that exercise every alternative.
import regex, random, json, sys
pats = {
 "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
 "llama3": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
 "qwen2": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}
pool = [' ',' ',' ','\t','\n','\r','\u00a0','\u3000','\u2028','\x0b','\x0c','\u0085','a','Z','é','中','1','2','٣','Ⅻ','½',"'","'",'s','S','ſ','K','l','L','r','R','E','e','v','d','D','m','t','!','.','-','😀','\u0301','_','\u200b','\ufeff','\u1680']
random.seed(3)
for i in range(400):
  s=''.join(random.choice(pool) for _ in range(random.randint(1,12)))
  print(json.dumps({"text":s, **{k:regex.findall(p,s) for k,p in pats.items()}}, ensure_ascii=False))
