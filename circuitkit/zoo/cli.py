"""``circuitkit zoo list | show NAME``."""

from __future__ import annotations

import json


def register(sub) -> None:
    zoo = sub.add_parser("zoo", help="bundled models with known circuits",
                         description="List, inspect, train and verify the bundled zoo models.")
    zsub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zsub.required = True
    ls = zsub.add_parser("list", help="list the bundled models", description="List the bundled zoo models.")
    ls.set_defaults(func=_cmd_list)
    show = zsub.add_parser("show", help="print a model's card", description="Print a zoo model's card as JSON.")
    show.add_argument("name")
    show.set_defaults(func=_cmd_show)


def _cmd_list(args) -> int:
    from circuitkit.zoo import list_zoo

    cards = list_zoo()
    if not cards:
        print("no zoo models found")
        return 0
    width = max(len(c.name) for c in cards)
    for card in cards:
        acc = f"acc={card.accuracy:.3f}" if card.accuracy is not None else ""
        print(f"{card.name:{width}s}  {card.construction:10s}  {card.task['builder']:14s} {acc:10s} {card.description}")
    return 0


def _cmd_show(args) -> int:
    from circuitkit.zoo import zoo_card

    print(json.dumps(zoo_card(args.name).to_json(), indent=2))
    return 0
