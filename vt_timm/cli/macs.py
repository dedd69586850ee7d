"""Command line of vt_timm.tools.macs: MACs and params of the VT-ResNets and their ablations against the paper's tables."""
import argparse
from typing import Optional, Sequence

from ..tools.macs import DEPTHS, ablation_table, executed_table, format_table, model_table, profile_model, ratio_table


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--img-size', type=int, default=224, help='square input resolution')
    parser.add_argument('--markdown', action='store_true', help='print markdown tables')
    args = parser.parse_args(argv)

    names = [f'{prefix}resnet{d}' for d in DEPTHS for prefix in ('', 'vt_')]
    profiles = {name: profile_model(name, args.img_size, executed=True) for name in names}
    print(f'MACs (multiply-adds) and parameters at {args.img_size}x{args.img_size}, 1000 classes; '
          f'T2/T8 = the paper\'s Tables 2 and 8, dev = our deviation from them\n')
    print(format_table(model_table(list(profiles.values())), args.markdown))
    print('\nResNet / VT-ResNet ratios next to the paper\'s Table 1 (stage 5 = ResNet layer4 vs the VT stage)\n')
    print(format_table(ratio_table(profiles), args.markdown))
    print('\nMACs in the paper\'s form (the equations as written: what the tables above and the paper compare) '
          'next to the MACs the inference fast paths execute (exact re-associations, e.g. the projector\'s '
          'logits as X (W_Q (T W_K)^T); docs/benchmarks.md)\n')
    print(format_table(executed_table(list(profiles.values())), args.markdown))
    print('\nAblation variants of VT-R18/34 next to the paper\'s Tables 3-7 (create_model kwargs); '
          'Δ = change from our default model, paper Δ = change from the paper\'s Table 2 row. '
          'Clustering counts its K-means (2 matmuls per Lloyd step, 3 steps), pooling its resize (2 matmuls)\n')
    print(format_table(ablation_table(args.img_size), args.markdown))


if __name__ == '__main__':
    main()
