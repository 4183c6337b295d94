"""The `lavie` command."""

import argparse
import sys


def convert_checkpoint(args):
    from .convert import convert_checkpoint

    output = convert_checkpoint(args.stage, args.input, args.output, args.unet_config)
    print(f"wrote {args.stage} UNet to {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavie", description="LaVie cascaded text-to-video: models and tools")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "convert-checkpoint",
        help="convert a released LaVie checkpoint into a from_pretrained-loadable folder",
        description="Convert a released LaVie checkpoint (e.g. lavie_base.pt) into a diffusers-layout folder. "
        "Strict: every checkpoint tensor is used and every model tensor is set.",
    )
    p.add_argument("--stage", required=True, help="cascade stage of the checkpoint: base or interpolation")
    p.add_argument("--input", required=True, help="the checkpoint file ({'ema': state_dict} or a bare state dict)")
    p.add_argument("--output", required=True, help="folder to write config.json and the safetensors weights to")
    p.add_argument("--unet-config", help="config.json of the 2D UNet the checkpoint was inflated from "
                   "(default: Stable Diffusion 1.4's)")
    p.set_defaults(func=convert_checkpoint)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (OSError, ValueError) as error:
        print(f"lavie {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
