"""SAEs and transcoders spliced into a model at several sites at once, error terms kept.

A *site* is one SAELens dictionary in the model: an SAE reads and rewrites one hook point
(``x -> decode(encode(x)) + error``); a transcoder (SAELens ``Transcoder``) reads its input hook
(the MLP's input) and rewrites its output hook (``mlp_out``) as ``decode(encode(x_in)) + error``,
the error being what the real MLP wrote minus the transcoder's reconstruction. With every error
term kept the forward pass is unchanged, so features and errors are a lossless decomposition of
the model's activations.

The node variables of a site are its feature activations ``[batch, pos, d_sae]`` and its error
``[batch, pos, width]``; the site's output is ``decode(acts) + error``. `splice_run` runs
the model with every site spliced and, per call, can record them, replace them (ablation and
patching), or cut them into gradient leaves so that gradients stop at each site (direct effects
between sites, used for the edges of a feature circuit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError, InputTypeError
from circuitkit.sae.features import check_hook, flat_input, hook_width

INPUT_HOOK = names.hook("resid_pre", 0)  # the input node is the residual stream before block 0


@dataclass(frozen=True)
class Site:
    """One spliced dictionary: ``sae`` reads ``hook_in`` and rewrites ``hook_out``.

    ``short`` names the site in node ids (``f{layer}.{short}.{index}``, ``e{layer}.{short}``):
    the hook's short name (``resid_pre``, ``mlp_out``; a transcoder is named by its output hook).
    """

    sae: Any
    hook_in: str
    hook_out: str
    layer: int
    short: str
    width_out: int
    out_shape: tuple[int, ...] = field(default=())  # trailing dims of the hook_out activation

    @property
    def is_transcoder(self) -> bool:
        return self.hook_in != self.hook_out

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def feature(self, index: int, pos: int | None = None) -> str:
        return names.feature(self.layer, self.short, index, pos)

    def error(self, pos: int | None = None) -> str:
        return names.error(self.layer, self.short, pos)

    def __repr__(self) -> str:
        kind = "transcoder" if self.is_transcoder else "sae"
        return f"Site({kind} {self.hook_in}{'->' + self.hook_out if self.is_transcoder else ''}, d_sae={self.d_sae})"


def _layer_of(hook_name: str) -> int:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else 0


def _hook_shape(model, hook_name: str) -> tuple[int, ...]:
    shapes: dict[str, tuple[int, ...]] = {}

    def grab(act, hook):
        shapes["s"] = tuple(act.shape[2:])

    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(hook_name, grab)], return_type=None)
    if "s" not in shapes:
        raise InputError(f"hook {hook_name!r} is never reached in a forward pass of {model.cfg.model_name!r} "
                         "(hook_mlp_in / hook_attn_in need model.set_use_hook_mlp_in(True) / "
                         "set_use_attn_in(True)); splice at a hook the model runs, e.g. blocks.L.ln2.hook_normalized")
    return shapes["s"]


def _hook_order(model, hooks: Sequence[str]) -> dict[str, int]:
    """The order in which a forward pass reaches each hook (registration order is not it)."""
    order: dict[str, int] = {}

    def record(name: str):  # by name: a bridge's hook point carries its own name, not the alias
        def hook_fn(act, hook):
            order.setdefault(name, len(order))
        return hook_fn

    tokens = torch.zeros((1, 1), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(h, record(h)) for h in dict.fromkeys(hooks)], return_type=None)
    return order


def _as_pairs(saes) -> list[tuple[Any, str | None, str | None]]:
    if isinstance(saes, Mapping):
        out = []
        for key, sae in saes.items():
            if isinstance(key, tuple):
                out.append((sae, key[0], key[1]))
            else:
                out.append((sae, key, None))
        return out
    if isinstance(saes, Site):
        return [(saes.sae, saes.hook_in, saes.hook_out)]
    if not isinstance(saes, (list, tuple)):
        saes = [saes]
    return [(s.sae, s.hook_in, s.hook_out) if isinstance(s, Site) else (s, None, None) for s in saes]


def make_sites(model, saes) -> list[Site]:
    """Check every SAE / transcoder fits ``model`` and return the sites in computation order.

    ``saes``: one SAELens SAE, a list of them (each reads the hook in its config,
    ``cfg.metadata.hook_name``; a transcoder also names ``cfg.metadata.hook_name_out``), or a
    mapping ``hook_name -> sae`` / ``(hook_in, hook_out) -> transcoder``. Raises ``ValueError``
    before any work for an unknown hook (with close matches), a width that does not match the
    hook's (``d_in``, or a transcoder's ``d_out``), a transcoder without an output hook, or two
    dictionaries on one hook. Sites this returned are accepted as they are, so a caller builds
    them once and passes them to every feature function.
    """
    from sae_lens import Transcoder

    if isinstance(saes, list | tuple) and saes and all(isinstance(s, Site) for s in saes):
        return list(saes)  # already made (and checked) for this model: built once, shared
    pairs = _as_pairs(saes)
    if not pairs:
        raise InputError("no SAEs to splice; pass an SAELens SAE, a list of them or {hook_name: sae}")
    sites = []
    for sae, hook_in, hook_out in pairs:
        if not hasattr(sae, "cfg") or not hasattr(sae, "encode"):
            raise InputTypeError(f"expected an SAELens SAE or Transcoder, got {type(sae).__name__}")
        hook_in = hook_in or sae.cfg.metadata.hook_name
        if not hook_in:
            raise InputError("an SAE's config names no hook (cfg.metadata.hook_name); pass {'blocks.L.hook_...': sae}")
        check_hook(model, hook_in)
        _hook_shape(model, hook_in)
        width_in = hook_width(model, hook_in)
        if int(sae.cfg.d_in) != width_in:
            raise InputError(
                f"the SAE for {hook_in!r} has d_in={sae.cfg.d_in} but that hook of model {model.cfg.model_name!r} "
                f"carries {width_in}-wide activations; use an SAE trained on this hook, or pass the hook it was "
                "trained on ({'blocks.L.hook_...': sae})")
        transcoder = isinstance(sae, Transcoder)
        if transcoder:
            hook_out = hook_out or sae.cfg.metadata.hook_name_out
            if not hook_out:
                raise InputError(f"the transcoder reading {hook_in!r} names no output hook "
                                 "(cfg.metadata.hook_name_out); pass {(hook_in, 'blocks.L.hook_mlp_out'): transcoder}")
            check_hook(model, hook_out)
            _hook_shape(model, hook_out)
        else:
            if hook_out not in (None, hook_in):
                raise InputError(f"an SAE rewrites the hook it reads; got hook_in={hook_in!r}, hook_out={hook_out!r} "
                                 "(only an SAELens Transcoder maps one hook to another)")
            hook_out = hook_in
        shape_out = _hook_shape(model, hook_out)
        width_out = 1
        for d in shape_out:
            width_out *= int(d)
        d_out = int(getattr(sae.cfg, "d_out", sae.cfg.d_in)) if transcoder else int(sae.cfg.d_in)
        if d_out != width_out:
            raise InputError(f"the transcoder {hook_in!r} -> {hook_out!r} has d_out={d_out} but {hook_out!r} carries "
                             f"{width_out}-wide activations; pass the output hook it was trained to predict")
        layer = _layer_of(hook_out)
        sites.append(Site(sae, hook_in, hook_out, layer, names.hook_short(hook_out), width_out, shape_out))
    outs = [s.hook_out for s in sites]
    dupes = sorted({h for h in outs if outs.count(h) > 1})
    if dupes:
        raise InputError(f"two dictionaries rewrite {dupes}; splice at most one SAE or transcoder per hook")
    order = _hook_order(model, [h for s in sites for h in (s.hook_in, s.hook_out)])
    for s in sites:
        if s.is_transcoder and order[s.hook_in] >= order[s.hook_out]:
            raise InputError(f"transcoder input {s.hook_in!r} comes after its output {s.hook_out!r} in the forward pass")
    labels = [(s.layer, s.short) for s in sites]
    if len(set(labels)) != len(labels):
        raise InputError(f"two sites share a node id prefix: {labels}; splice one dictionary per hook kind and layer")
    return sorted(sites, key=lambda s: order[s.hook_out])


# --- the spliced run ----------------------------------------------------------------------------

ActsFn = Callable[[int, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class SpliceRecord:
    """What one spliced run recorded, per site index.

    ``acts`` / ``errors``: the values the site computed from its (possibly intervened) input,
    ``[batch, pos, d_sae]`` / ``[batch, pos, width]``; attached to the autograd graph when the run
    has gradients. ``leaves_acts`` / ``leaves_errors``: the tensors the rest of the model read
    (gradient leaves in ``cut`` mode, else the same as ``acts`` / ``errors``). ``input``: the
    input node's value ``[batch, pos, d_model]`` (a leaf when ``input_leaf``).
    """

    acts: dict[int, Tensor] = field(default_factory=dict)
    errors: dict[int, Tensor] = field(default_factory=dict)
    leaves_acts: dict[int, Tensor] = field(default_factory=dict)
    leaves_errors: dict[int, Tensor] = field(default_factory=dict)
    input: Tensor | None = None


def _encode_decode(site: Site, x: Tensor) -> tuple[Tensor, Tensor]:
    sae = site.sae
    acts = sae.encode(x)
    return acts, sae.decode(acts)


@contextlib.contextmanager
def splice_run(model, sites: Sequence[Site], *, intervene: ActsFn | None = None, cut: bool = False,
               input_leaf: bool = False, input_value: Tensor | None = None,
               record: SpliceRecord | None = None) -> Iterator[SpliceRecord]:
    """Context manager: forward passes of ``model`` inside run with every site spliced.

    ``intervene(site_index, acts, error) -> (acts, error)`` may replace the values the rest of the
    model reads. ``cut``: those values become fresh gradient leaves, so gradients stop at every
    site (the recorded ``acts`` / ``errors`` stay attached to the upstream leaves). ``input_leaf``:
    the residual stream before block 0 becomes a gradient leaf (the input node); ``input_value``
    replaces it. The error term is computed with gradients, and separately from the features the
    output decodes, so that the output's gradient reaches features and error as two independent
    inputs and reaches the site's input unchanged (the splice is the identity).
    """
    rec = record if record is not None else SpliceRecord()
    hooks: list[tuple[str, Callable]] = []

    def input_hook(x: Tensor, hook) -> Tensor:
        if input_value is not None:
            x = input_value.to(x.device, x.dtype).expand_as(x).clone()
        if input_leaf:
            x = x.detach().requires_grad_(True)
        rec.input = x
        return x

    if input_leaf or input_value is not None:
        hooks.append((INPUT_HOOK, input_hook))
    pending: dict[int, Tensor] = {}

    def read(i: int, site: Site):
        def hook_fn(x: Tensor, hook) -> Tensor | None:
            flat = x.reshape(*x.shape[:2], -1)
            with flat_input(site.sae):
                acts_out, recon_out = _encode_decode(site, flat)
            if not site.is_transcoder:
                # Features for the output, and a second encoding for the error term, so that d out / d acts
                # is W_dec (the error does not move with them) while d out / d x stays the identity.
                with flat_input(site.sae):
                    _, recon_err = _encode_decode(site, flat)
                return finish(i, site, x, acts_out, flat - recon_err, x.shape)
            pending[i] = flat
            return None
        return hook_fn

    def write(i: int, site: Site):
        def hook_fn(y: Tensor, hook) -> Tensor:
            flat_in = pending.pop(i)
            with flat_input(site.sae):
                acts_out, _ = _encode_decode(site, flat_in)
                _, recon_err = _encode_decode(site, flat_in)
            error = y.reshape(*y.shape[:2], -1) - recon_err
            return finish(i, site, y, acts_out, error, y.shape)
        return hook_fn

    def finish(i: int, site: Site, like: Tensor, acts: Tensor, error: Tensor, shape) -> Tensor:
        rec.acts[i], rec.errors[i] = acts, error
        if intervene is not None:
            acts, error = intervene(i, acts, error)
        if cut:
            acts = acts.detach().requires_grad_(True)
            error = error.detach().requires_grad_(True)
        rec.leaves_acts[i], rec.leaves_errors[i] = acts, error
        with flat_input(site.sae):
            out = site.sae.decode(acts) + error
        return out.to(like.dtype).reshape(shape)

    for i, site in enumerate(sites):
        hooks.append((site.hook_in, read(i, site)))
        if site.is_transcoder:
            hooks.append((site.hook_out, write(i, site)))
    with model.hooks(fwd_hooks=hooks):
        yield rec
