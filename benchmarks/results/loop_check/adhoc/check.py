"""Side by side: prunelab's train_epoch vs a plain torchvision-style loop (DataLoader, per-image transforms),
same 10k training images, same initial weights, same SGD/cosine/bf16/channels_last; then test accuracy."""
import copy, sys, time, json
from pathlib import Path
import torch, torch.nn.functional as F
import torchvision.transforms.v2 as T
from prunelab import data as D, train as TR, models as M
from prunelab.config import Config

which = sys.argv[1]; epochs = int(sys.argv[2]); n = int(sys.argv[3])
torch.set_num_threads(2)
prec = sys.argv[4] if len(sys.argv) > 4 else "bf16"; init_seed = int(sys.argv[5]) if len(sys.argv) > 5 else 0
root = Path("../shared/data/cifar10-jpeg")
train, classes = D.read_image_folder_split(root / "train", D.cache_root(""))
test, _ = D.read_image_folder_split(root / "test", D.cache_root(""))
test = test.subset(torch.arange(0, len(test), 5))
g = torch.Generator().manual_seed(123)
sub = train.subset(torch.randperm(len(train), generator=g)[:n])
torch.manual_seed(init_seed)
model = M.resnet18_cifar(10)
mean, std = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]
cfg = Config(precision=prec, progress=False)
trainer = TR.Trainer.from_config(cfg, torch.device("cpu"))
print("trainer", trainer.amp_dtype, trainer.channels_last, trainer.augmentation, trainer.crop_padding_px, flush=True)
model = TR.prepare_model(model, trainer)
rows = []
if which == "prunelab":
    opt = TR.make_optimizer(model, trainer, 0.1)
    sched = TR.cosine_schedule(opt, epochs)
    for e in range(epochs):
        gen = torch.Generator().manual_seed(e)
        s = TR.train_epoch(model, sub, opt, None, trainer, gen)
        sched.step()
        rows.append(s); print(which, e + 1, s, flush=True)
else:
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    class DS(torch.utils.data.Dataset):
        def __len__(self): return len(sub)
        def __getitem__(self, i): return tf(sub.images[i]), sub.labels[i]
    dl = torch.utils.data.DataLoader(DS(), batch_size=128, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(init_seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = torch.nn.CrossEntropyLoss()
    for e in range(epochs):
        model.train(); t = time.perf_counter(); ls = 0; c = 0; seen = 0
        for x, y in dl:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                out = model(x); loss = crit(out, y)
            opt.zero_grad(); loss.backward(); opt.step()
            ls += loss.item() * len(y); c += (out.argmax(1) == y).sum().item(); seen += len(y)
        sched.step()
        s = {"loss": ls / seen, "train_accuracy": c / seen, "seconds": time.perf_counter() - t}
        rows.append(s); print(which, e + 1, s, flush=True)
acc = TR.score(model, test, trainer.normalizer, 500)["accuracy"]
print(which, "test", acc, flush=True)
json.dump({"which": which, "rows": rows, "test": acc}, open(f"/work/runs/loopcheck/{which}-{epochs}-{n}-{prec}-{init_seed}.json", "w"))
