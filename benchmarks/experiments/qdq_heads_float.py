"""Remove the Q/DQ pairs on the outputs of the Conv nodes whose names start with the given prefixes.
usage: qdq_heads_float.py SRC.onnx DST.onnx /conf.,/loc."""
import json, sys, os
from pathlib import Path
import onnx
sys.argv = sys.argv  # src dst pattern-prefixes
src, dst = sys.argv[1], sys.argv[2]
prefixes = tuple(sys.argv[3].split(","))
m = onnx.load(src); g = m.graph
prod = {o: n for n in g.node for o in n.output}
cons = {}
for n in g.node:
    for i in n.input: cons.setdefault(i, []).append(n)
drop = set(); k = 0
for q in list(g.node):
    if q.op_type != "QuantizeLinear": continue
    p = prod.get(q.input[0])
    if p is None or p.op_type != "Conv" or not p.name.startswith(prefixes): continue
    for dq in cons.get(q.output[0], []):
        if dq.op_type != "DequantizeLinear": continue
        for r in cons.get(dq.output[0], []):
            for j, name in enumerate(r.input):
                if name == dq.output[0]: r.input[j] = q.input[0]
        drop.add(id(dq))
    drop.add(id(q)); k += 1
kept = [n for n in g.node if id(n) not in drop]
del g.node[:]; g.node.extend(kept)
onnx.save(m, dst); print("removed", k)
