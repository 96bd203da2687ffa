"""What a config chooses for training, read without torch: the network (`train.arch`: one of ours,
built by nets.py, or a torchvision.models function) and its starting weights (`train.pretrained`,
resolved by weights.py). The stage loop and the flows check a config with these in processes that
may never train (options.check_train_settings)."""

# name -> channels per stage; each stage is two 3x3 conv + BN + ReLU, then a 2x2 max-pool.
# Measured on the offline world, 64 px, 2 cores (docs/training.md): "mlcnet" ~3x resnet18's speed.
WIDTHS = {
    "mlcnet": (16, 32, 64, 128),
    "mlcnet_wide": (32, 64, 128, 256),
    "mlcnet5": (16, 32, 64, 128, 256),      # a fifth stage: 128 px pictures end at 4x4, not 8x8
}


def is_local_arch(name: str) -> bool:
    """One of ours (nets.mlcnet), not a torchvision.models function."""
    return name in WIDTHS


def pretrained_choice(pretrained) -> str:
    """'none', 'auto', 'imagenet' or a weights file's path, from any spelling `pretrained` takes."""
    choice = str(pretrained).strip()
    low = choice.lower()
    if low in ("none", "false", "no", "off", "scratch", ""):     # quoted "no" as YAML's no (a file: ./no)
        return "none"
    if low in ("auto", "imagenet", "true", "yes", "on"):
        return low if low in ("auto", "imagenet") else "imagenet"
    return choice  # a path
