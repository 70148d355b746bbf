import sys, torch
sys.path.insert(0, "tests/kernels")
from test_triton_nf4 import make_layer, ref_out, repack
from lowbit.kernels.triton import launch, configs
torch.manual_seed(0)
for n, k, bn in [(96, 1024, 32), (40, 512, 32)]:
    layer = make_layer(n, k, "nf4", seed=n, device="cuda")
    x = torch.randn(1, k, device="cuda").half()
    ref = ref_out(x, layer)
    for split in (1, 2, 4):
        for depth in (1, 2):
            for mode in ("half2", "gemv"):
                pw = repack(type("T", (), {"layout": __import__("lowbit.kernels.triton.layout", fromlist=["x"])}), layer, bn)
                if mode == "half2":
                    y = launch.gemv_half2(x, pw, None, launch.GemvConfig(split=split, half2=True, depth=depth))
                else:
                    y = launch.gemv(x, pw, None, launch.GemvConfig(split=split, lut_reg=True))
                err = (y.float() - ref).abs().max().item() / ref.abs().max().item()
                print(n, k, mode, "split", split, "depth", depth, f"err {err:.2e}", flush=True)
    print("cfg", configs.half2_config(n, k, pw.qweight.shape[0], pw.chunks, x.device, True))
