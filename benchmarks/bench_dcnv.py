"""Benchmark: numpyconv DCNv3 / DCNv4 core ops vs InternImage's ``dcnv3_core_pytorch`` (CPU).

The official module falls back to ``dcnv3_core_pytorch`` (``grid_sample`` based) when the CUDA op
is absent; this script re-creates it (official float32 reference grids, same tensor operations)
and times forward and forward+backward (input, offset and mask gradients) of the core op on the
three InternImage-T stage shapes by default (3x3, stride 1, pad 1, group = C/16, D = 16,
offsets ``randn``, mask softmaxed over each group's points), float32, channels last. Every
engine gets the same thread count (Numba and torch). Best of ``--repeat`` runs after a warm-up,
engines interleaved. Prints a Markdown table with the speed-up against the PyTorch reference.

    python benchmarks/bench_dcnv.py [--batch 2] [--repeat 5] [--threads 2] [--dtype float32]
"""
import numba
import numpy as np

from numpyconv.bench import (arg_parser, blas_threads, import_torch, op_pair, time_rows, torch_pair,
                             torch_tensors)
from numpyconv.dcnv3 import dcnv3_backward, dcnv3_forward
from numpyconv.dcnv4 import dcnv4_backward, dcnv4_forward, pack_offset_mask

# (C, H=W): InternImage-T stages 1-3 (group = C // 16)
STAGES = [(64, 56), (128, 28), (256, 14)]
HYPER = (3, 1, 1, 1)        # kernel, stride, pad, dilation


def operands(n, channels, size, dtype, rng):
    group = channels // 16
    x = rng.standard_normal((n, size, size, channels)).astype(dtype)
    offset = rng.standard_normal((n, size, size, group * 9 * 2)).astype(dtype)
    logits = rng.standard_normal((n, size, size, group, 9))
    mask = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return x, offset, mask.reshape(n, size, size, group * 9).astype(dtype), group


def ours_dcnv3(x, offset, mask, group):
    return op_pair(dcnv3_forward, dcnv3_backward, (x, offset, mask) + HYPER + (group, x.shape[-1] // group))


def ours_dcnv4(x, offset, mask, group):
    offset_mask = pack_offset_mask(offset, mask, group)
    return op_pair(dcnv4_forward, dcnv4_backward, (x, offset_mask) + HYPER + (group, x.shape[-1] // group))


def dcnv3_core_pytorch(torch, x, offset, mask, group, group_channels, k=3, pad=1):
    """Re-creation of InternImage's ``dcnv3_core_pytorch`` (stride 1, dilation 1, scale 1)."""
    F = torch.nn.functional
    x = F.pad(x, [0, 0, pad, pad, pad, pad])
    n, h_in, w_in, _ = x.shape
    _, h_out, w_out, _ = offset.shape
    f32 = dict(dtype=torch.float32)
    half = (k - 1) // 2
    ref_y, ref_x = torch.meshgrid(torch.linspace(half + 0.5, half + 0.5 + h_out - 1, h_out, **f32),
                                  torch.linspace(half + 0.5, half + 0.5 + w_out - 1, w_out, **f32),
                                  indexing='ij')
    ref = torch.stack((ref_x.reshape(-1)[None] / w_in, ref_y.reshape(-1)[None] / h_in),
                      -1).reshape(1, h_out, w_out, 1, 2)
    gx, gy = torch.meshgrid(torch.linspace(-half, half, k, **f32),
                            torch.linspace(-half, half, k, **f32), indexing='ij')
    grid = torch.stack((gx / w_in, gy / h_in), -1).reshape(-1, 1, 2).repeat(1, group, 1)
    grid = grid.permute(1, 0, 2).reshape(1, 1, 1, group * k * k, 2)
    norm = torch.tensor([w_in, h_in]).reshape(1, 1, 1, 2).repeat(1, 1, 1, group * k * k)
    loc = (ref + grid).repeat(n, 1, 1, 1, 1).flatten(3, 4) + offset / norm
    grids = (2 * loc - 1).view(n, h_out * w_out, group, k * k, 2).transpose(1, 2).flatten(0, 1)
    value = x.view(n, h_in * w_in, group * group_channels).transpose(1, 2)
    value = value.reshape(n * group, group_channels, h_in, w_in)
    sampled = F.grid_sample(value, grids, mode='bilinear', padding_mode='zeros',
                            align_corners=False)
    m = mask.view(n, h_out * w_out, group, k * k).transpose(1, 2)
    m = m.reshape(n * group, 1, h_out * w_out, k * k)
    out = (sampled * m).sum(-1).view(n, group * group_channels, h_out * w_out)
    return out.transpose(1, 2).reshape(n, h_out, w_out, -1).contiguous()


def torch_dcnv3(torch, x, offset, mask, group):
    return torch_pair(torch, lambda *t: dcnv3_core_pytorch(torch, *t, group, x.shape[-1] // group),
                      torch_tensors(torch, x, offset, mask))


def main(argv=None):
    args = arg_parser(__doc__.splitlines()[0], batch=2, threads=True).parse_args(argv)
    threads = min(args.threads or blas_threads(), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    torch = import_torch(threads)
    rng = np.random.default_rng(0)
    print(f"DCNv3/DCNv4 core, N={args.batch}, 3x3, stride 1, pad 1, D=16, {args.dtype}, "
          f"{threads} threads\n")
    print("| C, HxW | engine | forward (ms) | forward+backward (ms) | speed-up fwd | speed-up fwd+bwd |")
    print("|---|---|---:|---:|---:|---:|")
    for channels, size in STAGES:
        x, offset, mask, group = operands(args.batch, channels, size, args.dtype, rng)
        engines = {'numpyconv dcnv3': ours_dcnv3(x, offset, mask, group),
                   'numpyconv dcnv4': ours_dcnv4(x, offset, mask, group)}
        if torch is not None:
            engines['dcnv3_core_pytorch (torch CPU)'] = torch_dcnv3(torch, x, offset, mask, group)
        times = {name: (f, fb) for name, _, f, fb in time_rows(engines, args.repeat)}
        reference = times.get('dcnv3_core_pytorch (torch CPU)')
        for name, (f, fb) in times.items():
            ratio = (f"{reference[0] / f:.2f}x | {reference[1] / fb:.2f}x" if reference
                     else "- | -")
            print(f"| {channels}, {size}x{size} | {name} | {1e3 * f:.2f} | {1e3 * fb:.2f} | {ratio} |")


if __name__ == '__main__':
    main()
