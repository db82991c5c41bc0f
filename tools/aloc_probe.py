"""Issue 3 probe: where does the mAP left under A_loc come from? Detections of the matched
(attacked) anchors vs the rest, after PGD-10 and PGD-50 on the default STD (100 test images).
Run: .venv/bin/python tools/aloc_probe.py  ->  results/aloc_probe.json"""
import torch, json
from advlib.experiment import Experiment
from advlib.attacks import preset
from advlib.robustness import adversarial_images
from advlib.losses import match_anchors
from advlib.evaluate import evaluate_voc
from advlib.models.ssd import DenseOutput

ex = Experiment("default", progress=False)
m = ex.model("std")
x, t = ex.eval_data
x, t = x[:100], t[:100]
matched = match_anchors(m.anchors, t, m.box_coder)
pos = matched.positive  # [B, A]
out = {}
for name, steps in (("clean", 0), ("A_loc-10", 10), ("A_loc-50", 50)):
    adv = x if steps == 0 else adversarial_images(m, x, t, preset("A_loc", steps=steps), progress=False)
    with torch.no_grad():
        o = m(adv)
    res = {}
    for part, keep in (("all", torch.ones_like(pos)), ("matched only", pos), ("unmatched only", ~pos)):
        logits = o.cls_logits.clone()
        logits[~keep] = torch.tensor([1e4] + [0.0] * (logits.shape[-1] - 1))
        dets = m.postprocess(DenseOutput(logits, o.box_deltas))
        res[part] = evaluate_voc(dets, t, ex.num_classes).map
    out[name] = res
    print(name, {k: round(v, 4) for k, v in res.items()}, flush=True)
from advlib.results import save_json
print("wrote", save_json(out, "aloc_probe.json", "default"))
