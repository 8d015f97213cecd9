"""Write ``numpyconv/data/imagenet_classes.txt``: the 1000 ImageNet-1k class names, one a line, in
class-index order (line ``i`` names logit ``i``).

The names are torchvision's, from the metadata of its ImageNet weights
(``torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta['categories']``), so the file is
generated once on a machine with torchvision and committed; numpyconv itself only reads the text
file. Run from the repository root::

    python tests/data/make_imagenet_classes.py
"""
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / 'numpyconv' / 'data' / 'imagenet_classes.txt'


def main():
    from torchvision.models import ResNet50_Weights
    names = ResNet50_Weights.IMAGENET1K_V2.meta['categories']
    if len(names) != 1000 or len(set(names)) != 1000 or any('\n' in n or not n.strip() for n in names):
        raise SystemExit(f"unexpected class list: {len(names)} names, {len(set(names))} unique")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(''.join(name + '\n' for name in names), encoding='utf-8')
    print(f"wrote {len(names)} class names to {OUT}")


if __name__ == '__main__':
    main()
