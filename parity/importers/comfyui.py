"""ComfyUI workflows -> cases of the `comfyui` profile (`parity import WORKFLOW --format comfyui`).

Reads the API format ({"<id>": {"class_type", "inputs"}}: what ComfyUI's /prompt takes, also the
body of a /prompt request, {"prompt": ...}), a ComfyUI PNG (its `prompt` text chunk, else its
`workflow` chunk; parsed as JSON) and the UI format (the saved workflow file: nodes[] with
widgets_values, links[]), which is turned into the API format first: muted nodes are dropped,
bypassed ones wired through as ComfyUI's frontend does, Reroute and PrimitiveNode resolved.

Every output node (SaveImage, PreviewImage) becomes one case: the graph behind it is walked back
through the sampler, the model (UNETLoader, LoRAs, ModelSamplingFlux), the prompt (CLIPTextEncode,
FluxGuidance, ReferenceLatent) and the image (LoadImage, ImageStitch, FluxKontextImageScale or
ImageScale, VAEEncode). A node the walk meets that cannot be modelled stops the import with its id
and class; nodes that change nothing here are named in a note. Model files come from --base, the
image from --control-dir (ComfyUI's input folder), LoRAs from --lora-dir (models/loras).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ParityError, did_you_mean
from ..validate import problem
from . import Context, Fields, _image_format, read_json

PROFILE = "comfyui"
API = "ComfyUI"
KIND = "workflow"

OUTPUTS = ("SaveImage", "PreviewImage")
SAMPLERS = ("euler",)
SCHEDULERS = ("simple", "normal", "beta", "sgm_uniform")  # sigma_schedule alternatives of the same names
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")  # UNETLoader (nodes.py:903-920)
MAX_SEED = 2**63 - 1  # a Case's seed range (ComfyUI takes up to 2**64 - 1)
MUTED, BYPASSED = 2, 4  # LiteGraph node modes
CONTROL = None  # a widgets_values entry that is no input (control_after_generate, the upload button)
# widgets_values order of the UI format, per node class (the node's widget inputs in definition order)
WIDGETS = {
    "KSampler": ["seed", CONTROL, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "KSamplerAdvanced": ["add_noise", "noise_seed", CONTROL, "steps", "cfg", "sampler_name", "scheduler",
                         "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "CLIPTextEncode": ["text"],
    "CLIPTextEncodeFlux": ["clip_l", "t5xxl", "guidance"],
    "FluxGuidance": ["guidance"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "DualCLIPLoader": ["clip_name1", "clip_name2", "type", "device"],
    "VAELoader": ["vae_name"],
    "LoadImage": ["image", CONTROL],
    "LoadImageOutput": ["image", CONTROL, CONTROL],
    "ImageStitch": ["direction", "match_image_size", "spacing_width", "spacing_color"],
    "FluxKontextImageScale": [],
    "ImageScale": ["upscale_method", "width", "height", "crop"],
    "ModelSamplingFlux": ["max_shift", "base_shift", "width", "height"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "SaveImage": ["filename_prefix"],
    "PreviewImage": [],
    "ConditioningZeroOut": [],
    "ReferenceLatent": [],
    "VAEEncode": [],
    "VAEDecode": [],
    "FluxKontextMultiReferenceLatentMethod": ["reference_latents_method"],
}
UI_ONLY = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")
PRIMITIVES = ("PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean")


def read_body(path: Path):
    """The workflow JSON: a .json file, or the text chunk ComfyUI's SaveImage writes into a PNG."""
    if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        return read_json(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", None) or image.info)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ParityError(f"cannot read the PNG's text chunks: {err}", source=path) from None
    for key in ("prompt", "workflow"):  # the API graph is what ran; the UI one is kept for the editor
        if isinstance(chunks.get(key), str):
            try:
                return json.loads(chunks[key])
            except json.JSONDecodeError as err:
                raise ParityError(f"the PNG's {key} text chunk is not valid JSON: {err}", source=path) from None
    raise ParityError("the PNG has no ComfyUI `prompt` or `workflow` text chunk (saved with --disable-metadata, "
                      "or re-encoded by another program?)", source=path)


# --- UI format -> API format ------------------------------------------------------------------------


def _api_graph(data, ctx: Context) -> tuple[dict, bool]:
    """(API graph, whether it came from the UI format)."""
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "nodes" not in data:
        data = data["prompt"]  # a /prompt request body
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return _from_ui(data, ctx), True
    if not isinstance(data, dict) or not data:
        raise ctx.error("workflow", "is neither ComfyUI's API format ({id: {class_type, inputs}}) nor its UI "
                                    "format ({nodes, links})")
    for nid, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not isinstance(node.get("inputs", {}), dict):
            raise ctx.error(f"node {nid}", "is not an API-format node ({class_type, inputs})")
    return {str(k): {"class_type": v["class_type"], "inputs": dict(v.get("inputs", {}))} for k, v in data.items()}, False


def _from_ui(data: dict, ctx: Context) -> dict:
    if (data.get("definitions") or {}).get("subgraphs"):
        raise ctx.error("workflow", "uses subgraphs, which are not modelled: export it in the API format "
                                    "(Workflow > Export (API)) or use the PNG ComfyUI saved")
    nodes, links = {}, {}
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node or not isinstance(node.get("type"), str):
            raise ctx.error(f"nodes[{i}]", "is not a UI-format node ({id, type, inputs, widgets_values})")
        nodes[node["id"]] = node
    for i, link in enumerate(data.get("links") or []):
        if isinstance(link, dict):  # newer frontends write links as objects
            link = [link.get("id"), link.get("origin_id"), link.get("origin_slot"), link.get("target_id"),
                    link.get("target_slot"), link.get("type")]
        if not isinstance(link, list) or len(link) < 6:
            raise ctx.error(f"links[{i}]", "is not [id, from node, from slot, to node, to slot, type]")
        links[link[0]] = link
    skipped = [f"{nid} {n['type']} ({'muted' if n.get('mode') == MUTED else 'bypassed'})"
               for nid, n in nodes.items() if n.get("mode") in (MUTED, BYPASSED)]
    if skipped:
        ctx.note("muted and bypassed nodes are left out as ComfyUI leaves them out: " + ", ".join(skipped))
    graph = {}
    for nid, node in nodes.items():
        if node.get("mode") in (MUTED, BYPASSED) or node["type"] in UI_ONLY:
            continue
        inputs = _widget_values(node, ctx)
        for slot in node.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            source = _source(slot["link"], nodes, links, ctx, set())
            if source is not None:
                inputs[slot["name"]] = source
        if node["type"] == "KSampler" and inputs.get(CONTROL_KEY) == "randomize":
            ctx.note(f"node {nid} (KSampler): control_after_generate is randomize, so a saved workflow may hold the "
                     "seed of the next run; the PNG ComfyUI saved holds the seed that drew it")
        inputs.pop(CONTROL_KEY, None)
        graph[str(nid)] = {"class_type": node["type"], "inputs": inputs}
    return graph


CONTROL_KEY = "control_after_generate"


def _widget_values(node: dict, ctx: Context) -> dict:
    values = node.get("widgets_values")
    if isinstance(values, dict):  # some nodes save their widgets by name
        return dict(values)
    names = WIDGETS.get(node["type"])
    if names is None or not values:
        return {}
    out = {}
    for i, (name, value) in enumerate(zip(names, values)):
        if name is None:
            if i > 0 and names[i - 1] in ("seed", "noise_seed"):
                out[CONTROL_KEY] = value
            continue
        out[name] = value
    return out


def _source(link_id, nodes: dict, links: dict, ctx: Context, seen: set):
    """What feeds an input through this link: [node id, slot], a primitive's value, or None (muted / no source)."""
    if link_id in seen or link_id not in links:
        return None
    seen.add(link_id)
    _, src, slot, _, _, kind = links[link_id][:6]
    node = nodes.get(src)
    if node is None or node.get("mode") == MUTED:
        return None
    if node["type"] == "PrimitiveNode":
        values = node.get("widgets_values") or [None]
        return values[0]
    inputs = node.get("inputs") or []
    if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
        # a bypassed node passes on its input of the same type (the one at the same slot first)
        ordered = ([inputs[slot]] if slot < len(inputs) else []) + list(inputs)
        for candidate in ordered:
            if isinstance(candidate, dict) and candidate.get("link") is not None \
                    and (node["type"] == "Reroute" or candidate.get("type") == kind):
                return _source(candidate["link"], nodes, links, ctx, seen)
        return None
    return [str(src), slot]


# --- walking the graph ------------------------------------------------------------------------------


class Node:
    def __init__(self, graph: "Graph", nid: str):
        self.graph, self.id = graph, nid
        self.cls = graph.nodes[nid]["class_type"]
        self.inputs = graph.nodes[nid]["inputs"]
        self.where = f"node {nid} ({self.cls})"
        graph.used.add(nid)

    def error(self, problem: str) -> ParityError:
        return self.graph.ctx.error(self.where, problem)

    def value(self, name: str, kinds, *, lo=None, hi=None, choices=None, default=None, required=True):
        value = self.inputs.get(name)
        if _is_link(value):
            value = self.graph.primitive(value, self)
        if value is None:
            if required:
                raise self.error(f"{name}: required input missing")
            return default
        wrong = problem(value, tuple(KINDS[k] for k in kinds), lo=lo, hi=hi)
        if wrong:
            raise self.error(f"{name} {wrong}")
        if kinds == (int,):
            value = int(value)
        if choices is not None and value not in choices:
            raise self.error(f'{name} "{value}" is not modelled; kontext-parity models {", ".join(choices)}'
                             f"{did_you_mean(value, choices)}")
        return value

    def link(self, name: str, *, required: bool = True) -> "Node | None":
        value = self.inputs.get(name)
        if value is None:
            if required:
                raise self.error(f"{name}: required input is not connected")
            return None
        if not _is_link(value):
            raise self.error(f"{name}: {value!r} is not a link to another node")
        return self.graph.node(str(value[0]), f"{self.where} {name}")

    def expect(self, *classes: str) -> "Node":
        if self.cls not in classes:
            raise self.error(f"not modelled here (kontext-parity follows {', '.join(classes)} at this point)")
        return self


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and not isinstance(value[0], bool) and isinstance(value[1], int)


NUMBER = (int, float)
KINDS = {int: "integer", float: "number", bool: "bool", str: "string"}  # Python type -> parity.validate kind


@dataclass
class Pixels:
    """An image chain: the loaded file and the one resize ComfyUI applies before VAEEncode."""

    path: str
    target: str = "none"  # control_target: none | preferred | asked
    fit: str = "stretch"
    size: tuple[int, int] | None = None  # ImageScale's width/height
    nodes: tuple[str, ...] = field(default=())

    def same(self, other: "Pixels") -> bool:
        return (self.path, self.target, self.fit, self.size) == (other.path, other.target, other.fit, other.size)


class Graph:
    def __init__(self, nodes: dict, ctx: Context):
        self.nodes, self.ctx, self.used = nodes, ctx, set()

    def node(self, nid: str, where: str) -> Node:
        if nid not in self.nodes:
            raise self.ctx.error(where, f"links to node {nid}, which is not in the workflow")
        return Node(self, nid)

    def primitive(self, link, owner: Node):
        source = self.node(str(link[0]), owner.where)
        if source.cls not in PRIMITIVES:
            raise owner.error(f"a value input is linked to {source.where}, which is not modelled")
        return source.inputs.get("value")

    # --- one output ---------------------------------------------------------------------------------
    def case(self, output: Node, name: str) -> dict:
        decode = output.link("images")
        if decode.cls == "VAEDecodeTiled":
            raise decode.error("tiled decoding blends overlapping tiles; not modelled (use VAEDecode)")
        decode.expect("VAEDecode")
        self.vae(decode.link("vae"))
        sampler = decode.link("samples").expect("KSampler", "KSamplerAdvanced")
        case = {"name": name, "profile": PROFILE, **self.sampler(sampler)}
        case.update(self.model(sampler.link("model")))
        text, guidance, refs = self.conditioning(sampler.link("positive"))
        case["prompt"] = text
        if guidance is None:
            self.ctx.note(f"{sampler.where}: no FluxGuidance on the positive prompt, so ComfyUI's default guidance "
                          "3.5 applies (comfy/model_base.py:895-897)")
            guidance = 3.5
        case["guidance"] = guidance
        negative = sampler.link("negative")
        unused = sorted(self.reach(negative), key=_order)
        self.ctx.note(f"{sampler.where}: cfg 1, so the negative conditioning ({', '.join(unused)}) is never run")
        if len(refs) != 1:
            what = "no ReferenceLatent" if not refs else f"{len(refs)} ReferenceLatent images"
            raise sampler.error(f"its positive conditioning has {what}; kontext-parity models exactly one "
                                "reference image")
        reference = self.pixels(refs[0].expect("VAEEncode"))
        case.update(self.control(reference))
        case.update(self.output_size(sampler.link("latent_image"), refs[0], reference))
        return case

    def sampler(self, node: Node) -> dict:
        if node.cls == "KSamplerAdvanced":
            if node.value("add_noise", (str,), choices=("enable",)) != "enable":
                raise node.error("add_noise disable is not modelled")
            seed = node.value("noise_seed", (int,), lo=0, hi=MAX_SEED)
            steps = node.value("steps", (int,), lo=1, hi=1000)
            if node.value("start_at_step", (int,), lo=0) != 0 or node.value("end_at_step", (int,), lo=0) < steps:
                raise node.error("start_at_step/end_at_step cover part of the steps (img2img or a split schedule); "
                                 "not modelled")
            node.value("return_with_leftover_noise", (str,), required=False)
        else:
            seed = node.value("seed", (int,), lo=0, hi=MAX_SEED)
            steps = node.value("steps", (int,), lo=1, hi=1000)
            denoise = node.value("denoise", NUMBER, lo=0, hi=1)
            if denoise != 1:
                raise node.error(f"denoise {denoise} below 1 (partial denoising of the input) is not modelled")
        cfg = node.value("cfg", NUMBER)
        if cfg != 1:
            raise node.error(f"cfg {cfg}: ComfyUI then also runs the negative conditioning each step (the stock "
                             "template's is ConditioningZeroOut), which is not modelled; the template's cfg is 1")
        node.value("sampler_name", (str,), choices=SAMPLERS)
        scheduler = node.value("scheduler", (str,), choices=SCHEDULERS)
        return {"seed": seed, "steps": steps, "sigma_schedule": scheduler}

    def model(self, node: Node) -> dict:
        loras, fields = [], {}
        while True:
            if node.cls in ("LoraLoaderModelOnly", "LoraLoader"):
                strength = node.value("strength_model", NUMBER, lo=-100, hi=100)
                name = node.value("lora_name", (str,))
                if node.cls == "LoraLoader" and node.value("strength_clip", NUMBER) != 0:
                    self.ctx.note(f"{node.where}: strength_clip applies the LoRA to the text encoders too; only its "
                                  "transformer part is modelled")
                if strength == 0:
                    self.ctx.note(f"{node.where}: strength_model 0, so ComfyUI does not apply {name}")
                else:
                    loras.insert(0, [self.ctx.file(name, f"{node.where} lora_name"), strength])
            elif node.cls == "ModelSamplingFlux":
                if "base_shift" not in fields:  # the node closest to the sampler wins
                    mu = _model_sampling_flux_shift(node)
                    fields.update(base_shift=mu, max_shift=mu)
                    self.ctx.note(f"{node.where}: schedule shift mu {mu:.6g} from its width and height")
            elif node.cls == "UNETLoader":
                fields["quantize"] = self.weights(node, node.value("unet_name", (str,)),
                                                  node.value("weight_dtype", (str,), choices=WEIGHT_DTYPES))
                break
            elif node.cls == "CheckpointLoaderSimple":
                fields["quantize"] = self.weights(node, node.value("ckpt_name", (str,)), "default")
                break
            else:
                raise node.error("not modelled in the model chain (UNETLoader, CheckpointLoaderSimple, "
                                 "LoraLoaderModelOnly, LoraLoader, ModelSamplingFlux)")
            node = node.link("model")
        if loras:
            fields["loras"] = loras
        return fields

    def weights(self, node: Node, file: str, weight_dtype: str) -> str:
        """Case.quantize for a model file: weight_dtype decides, else what the file's name says it holds."""
        self.ctx.note(f"{node.where}: {file} is run as the --base model's transformer")
        if file.lower().endswith(".gguf"):
            raise node.error(f"{file} is a GGUF file; GGUF quantization is not modelled")
        if weight_dtype != "default":
            return weight_dtype
        lowered = file.lower().replace("-", "_")
        if "fp8_scaled" in lowered or "fp8_e4m3fn_scaled" in lowered:
            self.ctx.note(f"{node.where}: {file} is taken for an fp8_scaled checkpoint (its name says so): "
                          "quantize fp8_scaled")
            return "fp8_scaled"
        if "fp8" in lowered:
            self.ctx.note(f"{node.where}: {file} is taken for plain fp8 e4m3fn weights (its name says fp8): "
                          "quantize fp8_e4m3fn")
            return "fp8_e4m3fn"
        return "none"

    def conditioning(self, node: Node):
        """(prompt, guidance, the latent inputs of its ReferenceLatent nodes) of a positive conditioning."""
        guidance, refs, method = None, [], None
        while True:
            if node.cls == "FluxGuidance":
                if guidance is None:  # the one closest to the sampler sets it last
                    guidance = float(node.value("guidance", NUMBER, lo=0, hi=100))
            elif node.cls == "ReferenceLatent":
                latent = node.link("latent", required=False)
                if latent is not None:
                    refs.insert(0, latent)
            elif node.cls == "FluxKontextMultiReferenceLatentMethod":
                method = method or node.value("reference_latents_method", (str,), choices=("offset", "index"))
            elif node.cls == "CLIPTextEncode":
                self.clip(node.link("clip"))
                return node.value("text", (str,)), guidance, refs
            elif node.cls == "CLIPTextEncodeFlux":
                clip_l, t5 = node.value("clip_l", (str,)), node.value("t5xxl", (str,))
                if clip_l != t5:
                    raise node.error("different clip_l and t5xxl prompts are not modelled (a case has one prompt)")
                if guidance is None:
                    guidance = float(node.value("guidance", NUMBER, lo=0, hi=100))
                self.clip(node.link("clip"))
                return t5, guidance, refs
            elif node.cls == "ConditioningZeroOut":
                raise node.error("a zeroed positive conditioning is not modelled")
            else:
                raise node.error("not modelled in the positive conditioning (CLIPTextEncode, FluxGuidance, "
                                 "ReferenceLatent)")
            node = node.link("conditioning")

    def clip(self, node: Node) -> None:
        while node.cls == "LoraLoader":
            node = node.link("clip")
        if node.cls == "CheckpointLoaderSimple":
            return
        node.expect("DualCLIPLoader")
        node.value("type", (str,), choices=("flux",))
        for key in ("clip_name1", "clip_name2"):
            name = node.value(key, (str,))
            if "fp8" in name.lower():
                self.ctx.note(f"{node.where}: {name} holds fp8 text-encoder weights; the case runs the --base "
                              "model's text encoders in float16, so that rounding is not modelled")

    def vae(self, node: Node) -> None:
        node.expect("VAELoader", "CheckpointLoaderSimple")

    def pixels(self, encode: Node) -> Pixels:
        """The image a VAEEncode encodes: the loaded file and at most one resize."""
        node = encode.link("pixels")
        scale, seen = None, [encode.id]
        while True:
            seen.append(node.id)
            if node.cls == "ImageStitch":
                if node.link("image2", required=False) is not None:
                    raise node.error("stitching a second image is not modelled (one control image per case)")
                node = node.link("image1")
            elif node.cls in ("FluxKontextImageScale", "ImageScale"):
                if scale is not None:
                    raise node.error(f"a second resize after {scale.where} is not modelled")
                scale, node = node, node.link("image")
            elif node.cls in ("LoadImage", "LoadImageOutput"):
                path = self.image_file(node)
                return self.resize(scale, Pixels(path, nodes=tuple(seen)))
            else:
                raise node.error("not modelled in the image chain (LoadImage, ImageStitch, FluxKontextImageScale, "
                                 "ImageScale, VAEEncode)")

    def resize(self, node: Node | None, pixels: Pixels) -> Pixels:
        if node is None:
            return pixels
        if node.cls == "FluxKontextImageScale":
            return Pixels(pixels.path, "preferred", "crop_then_resize", nodes=pixels.nodes)
        node.value("upscale_method", (str,), choices=("lanczos",))
        crop = node.value("crop", (str,), choices=("disabled", "center"))
        width, height = node.value("width", (int,), lo=0, hi=16384), node.value("height", (int,), lo=0, hi=16384)
        if width == 0 and height == 0:
            return pixels
        if width == 0 or height == 0:  # ImageScale keeps the aspect (nodes.py:1799-1802)
            from ..imaging import header_size

            w, h = header_size(self.ctx._file(pixels.path), "control image", exif_transposed=True)
            width = width or max(1, round(w * height / h))
            height = height or max(1, round(h * width / w))
        if min(width, height) < 8:
            raise node.error(f"{width}x{height} leaves no latent pixel (VAEEncode crops to multiples of 8)")
        fit = "crop_then_resize" if crop == "center" else "stretch"
        return Pixels(pixels.path, "asked", fit, (width, height), pixels.nodes)

    def image_file(self, node: Node) -> str:
        name = node.value("image", (str,))
        for tag in (" [input]", " [output]", " [temp]"):
            name = name[: -len(tag)] if name.endswith(tag) else name
        where = f"{node.where} image"
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not name:
            raise self.ctx.error(where, f'"{name}" is not a file name in ComfyUI\'s input folder')
        if self.ctx.control_dir is None:
            raise self.ctx.error(where, f'"{name}" is in ComfyUI\'s input folder: pass --control-dir FOLDER '
                                        "(that folder, or one holding a copy of the image)")
        path = self.ctx.control_dir / relative
        if not path.is_file():
            raise self.ctx.error(where, f'"{name}" is not in --control-dir {self.ctx.control_dir}')
        _image_format(path.read_bytes(), lambda why: self.ctx.error(where, f"{path} {why}"))
        return self.ctx._ref(path)

    def control(self, pixels: Pixels) -> dict:
        return {"control_image": pixels.path, "control_target": pixels.target, "control_fit": pixels.fit,
                "control_resize": "lanczos"}

    def output_size(self, latent: Node, reference: Node, ref_pixels: Pixels) -> dict:
        """The KSampler's latent decides the output size: the encoded control image, or an empty latent."""
        if latent.cls in ("EmptySD3LatentImage", "EmptyLatentImage"):
            if latent.value("batch_size", (int,), lo=1) != 1:
                raise latent.error("a batch (one noise tensor for several images) is not modelled")
            width = latent.value("width", (int,), lo=16, hi=16384)
            height = latent.value("height", (int,), lo=16, hi=16384)
            if ref_pixels.target == "asked" and ref_pixels.size != (width, height):
                raise latent.error(f"{width}x{height} while the reference image is scaled to "
                                   f"{ref_pixels.size[0]}x{ref_pixels.size[1]}: a case has one requested size, "
                                   "so two different ones are not modelled")
            return {"size_source": "request", "width": width, "height": height, "snap": "floor8"}
        latent.expect("VAEEncode")
        if latent.id != reference.id and not self.pixels(latent).same(ref_pixels):
            raise latent.error(f"the sampler's latent encodes another image than the reference ({reference.where}); "
                               "not modelled")
        if ref_pixels.target == "preferred":
            return {"size_source": "control_preferred", "snap": "none"}
        if ref_pixels.target == "asked":
            width, height = ref_pixels.size
            return {"size_source": "request", "width": width, "height": height, "snap": "floor8"}
        return {"size_source": "control", "snap": "floor8"}

    def reach(self, node: Node) -> set[str]:
        """Every node a branch depends on (marked as used), for naming what is not run."""
        found, todo = set(), [node.id]
        while todo:
            nid = todo.pop()
            if nid in found or nid not in self.nodes:
                continue
            found.add(nid)
            self.used.add(nid)
            todo += [str(v[0]) for v in self.nodes[nid]["inputs"].values() if _is_link(v)]
        return {f"{n} {self.nodes[n]['class_type']}" for n in found}


def _order(text: str):
    head = text.split(" ", 1)[0]
    return (0, int(head), text) if head.isdigit() else (1, 0, text)


def _model_sampling_flux_shift(node: Node) -> float:
    """ModelSamplingFlux's shift (comfy_extras/nodes_model_advanced.py:168-174), in its order of operations."""
    max_shift = node.value("max_shift", NUMBER, lo=0, hi=100)
    base_shift = node.value("base_shift", NUMBER, lo=0, hi=100)
    width = node.value("width", (int,), lo=16, hi=16384)
    height = node.value("height", (int,), lo=16, hi=16384)
    slope = (max_shift - base_shift) / (4096 - 256)
    intercept = base_shift - slope * 256
    return (width * height / (8 * 8 * 2 * 2)) * slope + intercept


def convert(body: Fields, ctx: Context) -> list[dict]:
    nodes, from_ui = _api_graph(body.data, ctx)
    graph = Graph(nodes, ctx)
    outputs = sorted((nid for nid, n in nodes.items() if n["class_type"] in OUTPUTS), key=_order)
    if not outputs:
        raise ctx.error("workflow", "has no SaveImage or PreviewImage node, so nothing to reproduce")
    cases = []
    for nid in outputs:
        name = ctx.stem if len(outputs) == 1 else f"{ctx.stem}/{nid}"
        cases.append(graph.case(graph.node(nid, "workflow"), name))
    idle = sorted((f"{nid} {n['class_type']}" for nid, n in nodes.items() if nid not in graph.used), key=_order)
    if idle:
        ctx.note(f"nodes on no path to an output, which ComfyUI does not run either: {', '.join(idle)}")
    ctx.note("compute dtype bf16, as ComfyUI picks on a bf16-capable GPU; ComfyUI on a CPU computes in fp32 "
             "(set dtype: fp32 to compare with such a run)")
    return cases
