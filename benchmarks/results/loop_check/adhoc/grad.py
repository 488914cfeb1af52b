import torch, torch.nn.functional as F, copy
from prunelab import models as M
torch.set_num_threads(1)
torch.manual_seed(0)
m0 = M.resnet18_cifar(10)
x = torch.randn(64, 3, 32, 32); y = torch.randint(0, 10, (64,))
def grads(cl, bf16, train=True):
    m = copy.deepcopy(m0); m.train(train)
    xx = x
    if cl:
        m = m.to(memory_format=torch.channels_last); xx = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(m(xx), y)
    loss.backward()
    return {n: p.grad.float().flatten() for n, p in m.named_parameters()}, loss.item()
ref, l0 = grads(False, False)
for cl, bf in [(True, False), (False, True), (True, True)]:
    g, l = grads(cl, bf)
    worst = sorted(((F.cosine_similarity(g[n], ref[n], 0).item(), (g[n].norm() / ref[n].norm()).item(), n) for n in ref))[:5]
    print(f"channels_last={cl} bf16={bf} loss {l:.4f} vs {l0:.4f}; worst cos:", [(round(c, 4), round(r, 3), n) for c, r, n in worst])
