"""The flows of ``diffeat extract``, ``probe`` and ``pca`` as API functions.

:func:`check_inputs` walks the image files and folders of an extraction (``recursive``, as in
every package: :func:`common_kernels.runtime.batch.find_images`), decodes every image (a bad one
stops
the batch, or with ``keep_going`` is set aside) and checks them against a
:class:`~diffeat.extractor.LoadPlan` (their sizes, the model's size multiple and the memory
estimate) before any weights are loaded; :func:`plan_pca_outputs` says where ``pca``'s PNGs go,
refuses a folder that is an input folder and leaves out finished images (``skip_existing``).
:func:`extract_batches`, :func:`write_features`, :func:`mean_probes`, :func:`check_pca_file`
and :func:`write_pca` are the work of the commands. Errors about inputs name the API's
arguments (``InvalidArgument``, :mod:`diffeat.errors`), which the CLI prints with its flags, so
the API and the CLI say the same.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common_kernels.runtime.batch import (
    ImageListing,
    Skipped,
    check_not_inputs,
    find_images,
    survey,
)
from common_kernels.runtime.errors import InvalidArgument, InvalidValue, literal
from common_kernels.runtime.files import write_json
from common_kernels.runtime.progress import progress
from diffeat import __version__
from diffeat.aggregation import aggregate
from diffeat.catalogue import LayerInfo
from diffeat.checks import DTYPES, model_infos
from diffeat.errors import check_int_range
from diffeat.extractor import FeatureExtractor
from diffeat.inputs import check_features_file, check_image_file, check_multiples, fed_size
from diffeat.io import load_image, parse_size, save_features, save_png
from diffeat.memory import MemoryPart, check_memory, pass_bytes, pca_bytes, probe_bytes
from diffeat.plan import LoadPlan
from diffeat.presets import get_preset
from diffeat.probes import PROBES, probe_all
from diffeat.viz import fit_pca_colours


@dataclass(frozen=True)
class CheckedInputs:
    """The checked inputs of an extraction: the plan, the images and the size they are fed at.

    Args:
        plan: from :func:`diffeat.extractor.check_from_pretrained`.
        images: the image files.
        batch_size: images per pass.
        infos: ``vae-out`` and the catalogues with shapes at ``fed``.
        fed: the largest (H, W) fed to the model.
        source: what set ``fed`` (named in memory errors).
        listing: what the walk of the inputs found (``left_out``: images in subfolders that
            were not walked).
        skipped: unreadable images set aside (``keep_going``), with the reason.
    """

    plan: LoadPlan
    images: tuple[Path, ...]
    batch_size: int
    infos: list[LayerInfo]
    fed: tuple[int, int]
    source: str
    listing: ImageListing | None = None
    skipped: tuple[Skipped, ...] = ()

    def shapes(self) -> list[tuple[int, ...]]:
        """(C, h, w) of every returned activation, in order."""
        by_name = {info.name: info.shape for info in self.infos}
        return [by_name[name] for name in self.plan.names]

    @property
    def itemsize(self) -> int:
        """Bytes per value of the plan's dtype."""
        return self.plan.dtype.itemsize


Keep = Callable[[CheckedInputs], list[MemoryPart]]


def check_inputs(
    plan: LoadPlan,
    images: str | os.PathLike | Sequence[str | os.PathLike] | ImageListing,
    batch_size: int = 1,
    *,
    recursive: bool = False,
    keep_going: bool = False,
    on_unreadable: Callable[[Skipped], None] | None = None,
    one_size: bool = False,
    group: int | None = None,
    why: str | None = None,
    keep: Keep | None = None,
    allow_large: bool = False,
) -> CheckedInputs:
    """The images of an extraction checked against ``plan`` before any weights are read:
    found (files as given, folders walked), every one decoded completely, of one size per
    ``group``, multiples of the model's size factor, and a memory estimate that fits (one
    batch's pass plus what ``keep`` says the caller holds).

    Args:
        plan: the checked model and options.
        images: image files and folders (a folder gives its images in name order), or what
            :func:`common_kernels.runtime.batch.find_images` found.
        batch_size: images per pass, >= 1.
        recursive: walk the subfolders of folders too (else their images are only counted:
            ``CheckedInputs.listing.left_out``).
        keep_going: set an image that does not decode aside (``CheckedInputs.skipped``, each
            passed to ``on_unreadable``) instead of raising; with none readable the result
            holds no image.
        on_unreadable: told about each image set aside.
        one_size: all images must share their own size (one features file, one PCA).
        group: consecutive images that must share their own size (default: a batch).
        why: why they must (for the message; arguments written ``{name}``).
        keep: the memory the caller keeps besides the pass (default: every image's features).
        allow_large: skip the memory check.

    Raises:
        InvalidArgument: ``images`` names a path where nothing is, or no image; images of
            other sizes; a memory estimate that does not fit.
        ValueError, FileNotFoundError, IsADirectoryError: an image that cannot be read.
    """
    check_int_range(batch_size, "batch_size", 1)
    listing = images if isinstance(images, ImageListing) else find_images(
        images, recursive=recursive, argument="images"
    )  # fmt: skip
    decoded = survey(
        listing.paths, check_image_file, keep_going=keep_going, on_unreadable=on_unreadable
    )
    paths, skipped = tuple(decoded.readable), tuple(decoded.unreadable)
    if not paths:  # keep_going, and nothing readable
        return CheckedInputs(plan, (), batch_size, plan.infos, plan.size, "", listing, skipped)
    sizes = list(decoded.readable.values())
    why = why or f"the images of one batch ({{batch_size}} {batch_size}) need one size"
    size, source = parse_size(plan.options.get("image_size")), ""
    if size is not None:
        source = f"{{image_size}} {size[0]}x{size[1]}"
    elif plan.size_from in ("preset", "layers"):
        side = get_preset(plan.preset).resolution
        size, source = (side, side), f"{{{plan.size_from}}} {plan.preset} ({side}x{side})"
    group = len(paths) if one_size else group or batch_size
    fed, fed_source = (size, source) if size else fed_size(paths, sizes, group, why)
    infos = plan.infos  # the plan's shapes when the size is the same: no second meta pass
    if fed != plan.size:
        options = plan.options
        faithful, tokens = options.get("faithful", False), options.get("max_sequence_length")
        try:
            infos = model_infos(plan.configs, fed, faithful, plan.control, tokens)
        except InvalidArgument as error:
            if size is not None or error.argument != "image_size":
                raise
            # the size is the images' own: say so, not the flag the user did not give
            detail = error.template.removeprefix("{image_size} ")
            raise InvalidValue(
                "images",
                f"{{images}}: {fed_source} cannot be fed as they are, {detail}; pass "
                "{image_size} S|HxW to resize them",
            ) from None
    checked = CheckedInputs(plan, paths, batch_size, infos, fed, fed_source, listing, skipped)
    parts = [pass_part(checked), *(keep or features_part)(checked)]
    check_memory(parts, plan.device, allow_large)
    multiple, factors = plan.configs.size_multiple, plan.configs.factors
    if size is not None and (size[0] % multiple or size[1] % multiple):
        raise InvalidValue(
            plan.size_from,
            f"{source}: height and width must be multiples of {multiple} for this model "
            f"({factors})",
        )
    if size is None:
        check_multiples(paths, sizes, multiple, factors)
    return checked


def left_out_line(listing: ImageListing | None, recursive: str = "recursive=True") -> str | None:
    """One line on the images in subfolders that were not walked, or None when there are none.

    Args:
        listing: what the walk found.
        recursive: how the reader asks for them (the CLI: ``--recursive``).
    """
    if listing is None or not listing.left_out:
        return None
    return (
        f"left out {listing.left_out} image(s) in {listing.left_out_folders} subfolder(s) of "
        f"the input folder(s); {recursive} takes them too"
    )


def pass_part(checked: CheckedInputs) -> MemoryPart:
    """One batch through the VAE encoder and the U-Net (on the device)."""
    plan, batch = checked.plan, min(checked.batch_size, len(checked.images))
    vae_width = plan.configs.vae["block_out_channels"][0]
    nbytes = pass_bytes(checked.infos, plan.names, batch, checked.itemsize, checked.fed, vae_width)
    what = f"{checked.source} with {{batch_size}} {checked.batch_size}"
    return MemoryPart(what, nbytes, True, checked.plan.size_from or "images")


def features_part(checked: CheckedInputs) -> list[MemoryPart]:
    """The features of every image, kept on the host."""
    count, values = len(checked.images), sum(math.prod(s) for s in checked.shapes())
    what = f"the features of {count} image(s) ({checked.source})"
    return [MemoryPart(what, count * values * checked.itemsize, False)]


def probe_part(checked: CheckedInputs) -> list[MemoryPart]:
    """The probes of one batch."""
    batch = min(checked.batch_size, len(checked.images))
    nbytes = probe_bytes(checked.shapes(), batch, checked.itemsize)
    return [MemoryPart(f"the probes of a batch ({checked.source})", nbytes, False)]


def resize_parts(resize: tuple[int, int] | None, concat: bool) -> Keep:
    """The features, plus their resized (and concatenated) copy when asked for."""

    def parts(checked: CheckedInputs) -> list[MemoryPart]:
        kept = features_part(checked)
        if resize is None and not concat:
            return kept
        shapes = checked.shapes()
        height, width = resize or max((s[1:] for s in shapes), key=lambda hw: hw[0] * hw[1])
        channels, count = sum(shape[0] for shape in shapes), len(checked.images)
        nbytes = count * channels * height * width * checked.itemsize * (2 if concat else 1)
        argument = "resize" if resize else "concat"
        what = f"{{resize}} {height}x{width}" if resize else f"{{concat}} at {height}x{width}"
        return [*kept, MemoryPart(what, nbytes, False, argument)]

    return parts


def pca_parts(
    count: int,
    values: Sequence[int],
    png: tuple[int, int],
    size_given: bool = False,
) -> list[MemoryPart]:
    """The PCA of the largest activation and the PNGs of one activation (one at a time).

    Args:
        count: images.
        values: values per image of every activation.
        png: the PNG (H, W).
        size_given: ``png`` is the caller's ``size`` (named in the message).
    """
    pca, pngs = pca_bytes(count, values, png)
    what = f"{{size}} {png[0]}x{png[1]}" if size_given else f"PNGs of {png[0]}x{png[1]}"
    return [
        MemoryPart(f"the PCA of {count} image(s)", pca, False),
        MemoryPart(what, pngs, False, "size"),
    ]


def pca_keep(size: tuple[int, int] | None) -> Keep:
    """The features of every image, their PCA and PNGs (at ``size``, else the fed size)."""

    def parts(checked: CheckedInputs) -> list[MemoryPart]:
        values = [math.prod(shape) for shape in checked.shapes()]
        png = size or checked.fed
        pca = pca_parts(len(checked.images), values, png, size is not None)
        return features_part(checked) + pca

    return parts


def check_probes(text: str) -> list[str]:
    """A comma-separated, non-empty subset of ``PROBES``.

    Raises:
        InvalidValue: anything else (``probes``).
    """
    probes = [p.strip() for p in text.split(",") if p.strip()]
    if not probes or not set(probes) <= set(PROBES):
        raise InvalidValue(
            "probes",
            f"{{probes}} {literal(repr(text))}: choose a comma-separated subset of "
            f"{','.join(PROBES)}",
        )
    return probes


def probe_table(results: dict[str, dict[str, float]], probes: Sequence[str]) -> str:
    """The probes of :func:`mean_probes` as a table: one row per activation."""
    width = max(len(name) for name in results)
    rows = [f"{'activation':<{width}}  " + "  ".join(f"{p:>11}" for p in probes)]
    for name, values in results.items():
        rows.append(f"{name:<{width}}  " + "  ".join(f"{values[p]:>11.4f}" for p in probes))
    return "\n".join(rows)


def png_stems(stems: Sequence[str], count: int) -> list[str]:
    """PNG name stems of ``count`` images: ``stems``, or ``image{i}`` when they do not fit."""
    return list(stems) if len(stems) == count else [f"image{i}" for i in range(count)]


def check_png_paths(folder: Path, stems: Sequence[str], layers: Sequence[str]) -> None:
    """Fail (``InvalidArgument``, ``output``) when a PNG ``folder/<stem>__<layer>.png`` would
    land on a folder."""
    for stem in stems:
        for path in pca_targets(folder, stem, layers):
            if path.is_dir():
                raise InvalidArgument("output", f"{literal(path)} is a folder, in the way of a PNG")


@dataclass(frozen=True)
class PcaOutputs:
    """Where the PNGs of ``pca`` go (:func:`plan_pca_outputs`).

    Args:
        listing: every image found.
        stems: each image's PNG stem under the folder (``name``, or ``sub/name`` with
            ``recursive``): its PNGs are ``folder/<stem>__<activation>.png``.
        pending: the images to run (those whose PNGs all exist left out with
            ``skip_existing``), with the walk's counts.
        done: the images left out because their PNGs all exist.
    """

    listing: ImageListing
    stems: dict[Path, str]
    pending: ImageListing
    done: tuple[Path, ...] = ()

    def stems_of(self, paths: Sequence[Path]) -> list[str]:
        """The PNG stems of ``paths`` (images of the listing), in order."""
        return [self.stems[path] for path in paths]


def plan_pca_outputs(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    layers: Sequence[str],
    *,
    recursive: bool = False,
    in_place: bool = False,
    skip_existing: bool = False,
) -> PcaOutputs:
    """Find the images of ``pca`` and check where their PNGs go, before any work: two images
    for one PNG, a PNG in the way of a folder, a PNG that would replace an input and (unless
    ``in_place``) a ``folder`` that is an input folder are refused.

    Args:
        images: image files and folders (``folder`` itself is never walked as an input).
        folder: the output folder; subfolders of the inputs are mirrored in it (``recursive``).
        layers: the activation names (one PNG per image and activation).
        recursive: walk the subfolders of input folders too.
        in_place: allow ``folder`` to be an input folder (the PNGs are written among its
            images, and are inputs of a later walk of it).
        skip_existing: leave out images whose PNGs all exist (resume an interrupted run).

    Raises:
        InvalidArgument: ``images`` names nothing, two images for one PNG, ``folder`` is an
            input folder, a PNG would replace an input (unless ``in_place``) or land on a
            folder.
    """
    folder = Path(folder)
    listing = find_images(images, recursive=recursive, exclude=[folder], argument="images")
    stems: dict[Path, str] = {}
    owners: dict[str, Path] = {}
    for image in listing.images:
        stem = image.relative.with_suffix("").as_posix()
        if stem in owners:
            raise InvalidValue(
                "images",
                literal(
                    f"{owners[stem]} and {image.path} would both be written to "
                    f"{folder / stem}__<activation>.png"
                ),
            )
        owners[stem], stems[image.path] = image.path, stem
    if not in_place and folder.is_dir():
        for source in listing.folders:
            if os.path.samefile(source, folder):
                raise InvalidArgument(
                    "output",
                    f"{folder} is the input folder {source}: the PNGs would be written among its "
                    "images (and be inputs of its next walk); choose another folder, or pass "
                    "{in_place} to write them there",
                    mentions={"in_place": "in_place=True"},
                )
    targets = {path: pca_targets(folder, stem, layers) for path, stem in stems.items()}
    check_png_paths(folder, list(stems.values()), layers)
    if not in_place:
        check_not_inputs([t for ts in targets.values() for t in ts], listing, argument="output")
    done = tuple(p for p, paths in targets.items() if skip_existing and existing(paths))
    pending = dataclasses.replace(
        listing, images=tuple(image for image in listing.images if image.path not in done)
    )
    return PcaOutputs(listing, stems, pending, done)


def pca_targets(folder: Path, stem: str, layers: Sequence[str]) -> list[Path]:
    """The PNGs of one image: ``folder/<stem>__<layer>.png`` for every layer."""
    return [folder / f"{stem}__{layer}.png" for layer in layers]


def existing(paths: Sequence[Path]) -> bool:
    """Whether every one of ``paths`` is a file (atomic writes leave no partial one)."""
    return all(path.is_file() for path in paths)


def run_batches(
    paths: Sequence[Path], batch_size: int, run: Callable[[list[Image.Image]], Any]
) -> list:
    """Call ``run(images)`` on batches of loaded images (a progress bar from 2 batches on).

    Args:
        paths: the (checked) image files.
        batch_size: images per call.
        run: called with each batch of PIL images; its results are returned in order.
    """
    results = []
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for batch in progress(batches, desc="diffeat", unit="batches", disable=len(batches) < 2):
        results.append(run([load_image(p) for p in batch]))
    return results


def extract_batches(
    extractor: FeatureExtractor, checked: CheckedInputs, prompt: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The features of every checked image (batches concatenated; the checks gave them one
    size) and the attention head count of each q/k/v/map layer."""
    generator = extractor.generator()
    parts = run_batches(
        checked.images, checked.batch_size, lambda images: extractor(images, prompt, generator)
    )
    features = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return features, dict(parts[0].heads)


def write_features(
    path: Path,
    extractor: FeatureExtractor,
    checked: CheckedInputs,
    prompt: str = "",
    resize: tuple[int, int] | None = None,
    resize_mode: str = "bilinear",
    concat: bool = False,
    model: str | None = None,
    refused: Sequence[Skipped] | None = None,
) -> dict[str, torch.Tensor]:
    """Extract the checked images and write a safetensors features file with its metadata.

    Args:
        path: the ``.safetensors`` file.
        extractor: loaded from ``checked.plan``.
        checked: from :func:`check_inputs`.
        prompt: the text prompt of every image.
        resize: (H, W) to resize every feature to.
        resize_mode: see :data:`diffeat.aggregation.RESIZE_MODES`.
        concat: one concatenated ``"features"`` key.
        model: the model as the caller named it (default: the plan's source).
        refused: the images of this file's block set aside, recorded in its metadata
            (``refused``: path -> reason) for a sharded extraction's check.

    Returns:
        The written features.
    """
    features, heads = extract_batches(extractor, checked, prompt)
    if resize is not None or concat:
        features = aggregate(features, resize, resize_mode, concat=False)
        if concat:
            features = {"features": torch.cat(list(features.values()), dim=1)}
    plan, config = checked.plan, extractor.config
    loras = plan.options.get("lora") or []
    metadata = {
        "diffeat": __version__,
        "model": str(plan.source if model is None else model),
        "preset": config.preset,
        "layers": list(features),
        "source_layers": list(extractor.layers),
        "heads": heads,  # attention head count of each q/k/v/map source layer
        "images": [str(p) for p in checked.images],
        "image_size": list(checked.fed),
        "prompt": prompt,
        "timestep": config.timestep,
        "sigma": extractor.plan.noise if extractor.backbone.flow else None,
        "noising": config.noising,
        "inversion_steps": config.inversion_steps,
        "latent": config.latent,
        "faithful": config.faithful,
        "lora": [str(p) for p in (loras if isinstance(loras, list | tuple) else [loras])],
        "controlnet": plan.options.get("controlnet"),
        "dtype": {dtype: key for key, dtype in DTYPES.items()}[plan.dtype],
        "seed": config.seed,
    }
    if refused is not None:
        metadata["refused"] = {str(item.path): item.reason for item in refused}
    save_features(path, features, metadata)
    return features


def mean_probes(
    extractor: FeatureExtractor,
    checked: CheckedInputs,
    probes: Sequence[str] = PROBES,
    prompt: str = "",
    output: Path | None = None,
) -> dict[str, dict[str, float]]:
    """The probes of every selected activation, averaged over the images (batches weighted by
    their size); written as JSON to ``output`` when given."""
    generator = extractor.generator()
    parts = run_batches(
        checked.images,
        checked.batch_size,
        lambda images: (
            len(images),
            probe_all(extractor, images, prompt, generator, probes=probes),
        ),
    )
    total = sum(n for n, _ in parts)
    results = {
        name: {p: sum(n * part[name][p] for n, part in parts) / total for p in probes}
        for name in parts[0][1]
    }
    if output is not None:
        write_json(output, results, indent=1, make_parents=True)
    return results


def check_pca_file(
    path: Path,
    folder: Path,
    size: tuple[int, int] | None = None,
    allow_large: bool = False,
) -> tuple[list[str], tuple[int, int] | None]:
    """(image stems, PNG size) of the PCA of a features file, checked before it is read: the
    file, the PNG paths in ``folder`` and the memory estimate.

    Args:
        path: a features file of :func:`write_features`.
        folder: where the PNGs go.
        size: the PNG (H, W) (default: the file's image size).
        allow_large: skip the memory check.

    Raises:
        InvalidArgument: a file that is no features file, a PNG path that is a folder, a
            memory estimate that does not fit.
    """
    shapes, meta = check_features_file(path)
    count = next(iter(shapes.values()))[0]
    stems = png_stems([Path(p).stem for p in meta.get("images", [])], count)
    given, size = size is not None, size or tuple(meta.get("image_size") or ()) or None
    png = size or max((s[2:] for s in shapes.values()), key=lambda hw: hw[0] * hw[1])
    values = [math.prod(s[1:]) for s in shapes.values()]
    memory = pca_parts(count, values, png, given)
    check_png_paths(folder, stems, list(shapes))
    check_memory(memory, torch.device("cpu"), allow_large)
    return stems, size


def write_pca(
    features: dict[str, torch.Tensor],
    folder: Path,
    stems: Sequence[str],
    size: tuple[int, int] | None = None,
    *,
    skip_existing: bool = False,
    on_image: Callable[[int], None] | None = None,
) -> int:
    """PCA-to-RGB PNGs ``folder/<stem>__<layer>.png`` of every activation (one PCA per
    activation, shared by the images), written image by image; returns their count.

    Args:
        features: ``{name: (N, C, h, w)}``.
        folder: the output folder.
        stems: the PNG stem of each image (``image{i}`` when their count does not fit).
        size: the PNG (H, W) (default: the feature's own size).
        skip_existing: leave out images whose PNGs all exist (the PCA still covers them).
        on_image: told the index of each image once its PNGs are written.
    """
    colours = {name: fit_pca_colours(feature) for name, feature in features.items()}
    count = len(next(iter(features.values())))
    written = 0
    for index, stem in enumerate(png_stems(stems, count)):
        targets = pca_targets(folder, stem, list(features))
        if skip_existing and existing(targets):
            continue
        for path, (name, feature) in zip(targets, features.items(), strict=True):
            save_png(path, colours[name](feature[index : index + 1], size)[0])
            written += 1
        if on_image is not None:
            on_image(index)
    return written
