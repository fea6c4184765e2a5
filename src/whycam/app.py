"""The interactive explorer (``whycam app``): a local Gradio page over ``whycam.explorer.Explorer``.

Pick an image (the demo photographs and digits, a folder given at launch, or an upload), a model and
its class (the top-5 predictions, clickable), any registered methods side by side, the layer, the
sign (evidence for, against, or both) and DiffCAM's question; see each map with its time, layer and
stride, change the overlay's opacity, plot the deletion/insertion or ROAD curves of what is shown,
and download the raw maps and overlays. Long runs show their progress and can be cancelled; an error
is shown on the page and the page keeps working. Offline: no analytics, no fonts or scripts from the
internet (needs the ``app`` extra: ``pip install 'whycam[app]'``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .data import read_image, to_tensor
from .explorer import AUTOMATIC, CURVES, QUESTIONS, Explanation, Explorer, iter_thumbnails
from .methods.base import methods

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after switching analytics off)

DEFAULT_METHODS = ("gradcam", "diffcam", "eigencam")
SIGNS = {"evidence for": "positive", "evidence against": "negative", "both (signed)": "both"}
PROGRESS = gr.Progress()  # Gradio gives each run its own tracker in place of this default
# Headless Chromium on a machine with no internet (the browser tests and the README's screenshot).
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
CSS = "#maps .thumbnail-item { min-height: 220px } footer { display: none !important }"


def _thumbnails(images) -> list:
    return list(iter_thumbnails(images))


def _failure(error: Exception) -> str:
    return f"**Error:** {error}"


class Page:
    """The page's event handlers over one ``Explorer``; each returns the updates of its outputs."""

    def __init__(self, explorer: Explorer):
        self.explorer = explorer

    def choose_model(self, name: str):
        """A model was chosen: its example images, questions and classes; the image is cleared."""
        source = self.explorer.sources[name]
        questions = self.explorer.questions(name)
        classes = self.explorer.model(name).classes or []
        return (
            [(picture, caption) for picture, caption in zip(_thumbnails(source.images.values()), source.images)],
            gr.update(choices=[(QUESTIONS[q], q) for q in questions], value=questions[0] if questions else None),
            gr.update(choices=[(c, i) for i, c in enumerate(classes)], value=None),
            None,
            None,
            gr.update(choices=[], value=None),
            gr.update(choices=[AUTOMATIC], value=AUTOMATIC),
            f"Model **{name}**: pick an example image or upload one.",
        )

    def pick(self, name: str, event: gr.SelectData):
        """An example image was clicked."""
        image = list(self.explorer.sources[name].images.values())[event.index]
        return self._shown(name, image, f"example {list(self.explorer.sources[name].images)[event.index]}")

    def upload(self, name: str, path: str | None):
        """A file was uploaded: read by whycam; an unreadable one is reported and nothing changes."""
        if path is None:
            return (gr.skip(),) * 4 + ("",)
        try:
            image = to_tensor(read_image(path))
        except Exception as error:  # noqa: BLE001 (shown on the page, which keeps working)
            return (gr.skip(),) * 4 + (_failure(error),)
        return self._shown(name, image, f"upload {Path(path).name}")

    def _shown(self, name: str, image: Tensor, what: str):
        try:
            top = self.explorer.top5(name, image)
            layers = self.explorer.layers(name, image)
        except Exception as error:  # noqa: BLE001
            return (gr.skip(),) * 4 + (_failure(error),)
        display, _ = self.explorer.prepare(name, image)
        choices = [(f"{label} ({p:.2f})", index) for index, label, p in top]
        return (
            image,
            display.permute(1, 2, 0).numpy(),
            gr.update(choices=choices, value=top[0][0]),
            gr.update(choices=[AUTOMATIC, *layers], value=AUTOMATIC),
            f"{what}: predicted **{top[0][1]}** ({top[0][2]:.2f}). Choose methods and press *Explain*.",
        )

    def explain(self, name, image, chosen, target, layer, sign, question, versus, opacity, progress=PROGRESS):
        """Every chosen method's map of the image, side by side."""
        if image is None:
            return gr.skip(), None, "**Error:** pick or upload an image first."
        try:
            explanation = self.explorer.explain(
                name,
                image,
                chosen,
                target=None if target is None else int(target),
                layer=layer,
                sign=SIGNS.get(sign, "positive"),
                question=question,
                versus=None if versus is None else int(versus),
                progress=lambda step, total, method: progress((step, total), desc=f"{method}", unit="method"),
            )
        except Exception as error:  # noqa: BLE001
            return gr.skip(), gr.skip(), _failure(error)
        return self._gallery(explanation, opacity), explanation, self._status(explanation)

    def _gallery(self, explanation: Explanation, opacity: float) -> list:
        return [(self.explorer.overlay(explanation, shown, opacity), shown.caption) for shown in explanation.shown]

    @staticmethod
    def _status(explanation: Explanation) -> str:
        lines = [f"Class explained: **{explanation.target_name}**."]
        if explanation.reference:
            lines.append(f"Reference group: {explanation.reference}.")
        lines += [f"**{method} failed:** {error}" for method, error in explanation.failures.items()]
        return "\n\n".join(lines)

    def restyle(self, explanation: Explanation | None, opacity: float):
        """The opacity changed: the overlays are drawn again from the maps already computed."""
        return gr.skip() if explanation is None else self._gallery(explanation, opacity)

    def references(self, name, question, target, versus) -> list:
        """Thumbnails of the reference group the question asks against."""
        try:
            images = self.explorer.reference_images(
                name, question, None if target is None else int(target), None if versus is None else int(versus)
            )
        except Exception:  # noqa: BLE001 (thumbnails are a courtesy; the run reports real errors)
            return []
        return _thumbnails(images)

    def curves(self, explanation: Explanation | None, kind: str):
        """The faithfulness curves of the maps on screen."""
        if explanation is None or not explanation.shown:
            return gr.skip(), "**Error:** explain an image first."
        try:
            return self.explorer.curves(explanation, kind), f"{kind} curves of {len(explanation.shown)} map(s)."
        except Exception as error:  # noqa: BLE001
            return gr.skip(), _failure(error)

    def download(self, explanation: Explanation | None, opacity: float):
        """A zip of the raw maps (.npy) and overlays (PNG) on screen."""
        if explanation is None or not explanation.shown:
            return gr.skip(), "**Error:** explain an image first."
        folder = Path(tempfile.mkdtemp(prefix="whycam-"))
        path = folder / f"whycam-{explanation.model}-{explanation.target_name}.zip".replace(" ", "_")
        path.write_bytes(self.explorer.archive(explanation, opacity))
        return str(path), f"{len(explanation.shown)} map(s) packed: maps/*.npy and overlays/*.png."


def _image_column(names: list[str]) -> dict[str, gr.components.Component]:
    """The left column: the model, the images, the class to explain."""
    with gr.Column(scale=1):
        return {
            "model": gr.Dropdown(names, value=names[0], label="Model", elem_id="model"),
            "examples": gr.Gallery(label="Examples", columns=4, height=240, allow_preview=False, elem_id="examples"),
            "upload": gr.File(label="Or upload an image", type="filepath", elem_id="upload"),
            "picture": gr.Image(label="Image (as the model sees it)", interactive=False, height=220, elem_id="image"),
            "target": gr.Radio([], label="Class to explain (top-5 predictions)", elem_id="target"),
        }


def _method_column() -> dict[str, gr.components.Component]:
    """The right column: methods and their settings, the maps, the curves, the download."""
    c = {}
    with gr.Column(scale=2):
        registered = list(methods())
        defaults = [m for m in DEFAULT_METHODS if m in registered]
        c["chosen"] = gr.CheckboxGroup(registered, value=defaults, label="Methods", elem_id="methods")
        with gr.Row():
            c["layer"] = gr.Dropdown([AUTOMATIC], value=AUTOMATIC, label="Layer (CAM methods)", elem_id="layer")
            c["sign"] = gr.Radio(list(SIGNS), value="evidence for", label="Sign (CAM methods)", elem_id="sign")
        with gr.Row():
            c["question"] = gr.Radio([], label="DiffCAM's question", elem_id="question")
            c["versus"] = gr.Dropdown([], label="why not: versus class", elem_id="versus", filterable=True)
        c["reference"] = gr.Gallery(
            label="Reference group", columns=6, height=110, allow_preview=False, elem_id="reference"
        )
        with gr.Row():
            c["run"] = gr.Button("Explain", variant="primary", elem_id="run")
            c["cancel"] = gr.Button("Cancel", elem_id="cancel")
        c["opacity"] = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity", elem_id="opacity")
        c["status"] = gr.Markdown("Pick an example image or upload one.", elem_id="status")
        c["maps"] = gr.Gallery(label="Maps", columns=3, height=360, object_fit="contain", elem_id="maps")
        with gr.Row():
            c["kind"] = gr.Radio(list(CURVES), value=CURVES[0], label="Faithfulness", elem_id="curve-kind")
            c["plot_button"] = gr.Button("Plot curves", elem_id="plot")
            c["pack"] = gr.Button("Download maps", elem_id="download")
        c["plot"] = gr.Plot(label="Faithfulness curves", elem_id="curves")
        c["files"] = gr.File(label="Maps and overlays", elem_id="files")
    return c


def _wire(blocks: gr.Blocks, page: Page, c: dict[str, gr.components.Component]) -> None:
    """Connect the page's events to ``page``'s handlers."""
    model_outputs = [c[k] for k in ("examples", "question", "versus", "image", "picture", "target", "layer", "status")]
    blocks.load(page.choose_model, c["model"], model_outputs)
    c["model"].change(page.choose_model, c["model"], model_outputs)
    shown_outputs = [c[k] for k in ("image", "picture", "target", "layer", "status")]
    c["examples"].select(page.pick, c["model"], shown_outputs)
    c["upload"].upload(page.upload, [c["model"], c["upload"]], shown_outputs)
    asked = [c[k] for k in ("model", "question", "target", "versus")]
    for changed in ("question", "target", "versus"):
        c[changed].change(page.references, asked, c["reference"])
    settings = [c[k] for k in ("model", "image", "chosen", "target", "layer", "sign", "question", "versus", "opacity")]
    explaining = c["run"].click(page.explain, settings, [c["maps"], c["explanation"], c["status"]])
    c["cancel"].click(None, cancels=[explaining])
    c["opacity"].release(page.restyle, [c["explanation"], c["opacity"]], c["maps"])
    c["plot_button"].click(page.curves, [c["explanation"], c["kind"]], [c["plot"], c["status"]])
    c["pack"].click(page.download, [c["explanation"], c["opacity"]], [c["files"], c["status"]])


def build(explorer: Explorer) -> gr.Blocks:
    """The page (a ``gr.Blocks``) over ``explorer``."""
    with gr.Blocks(title="whycam explorer", analytics_enabled=False) as blocks:
        state = {"image": gr.State(None), "explanation": gr.State(None)}
        gr.Markdown("## whycam explorer\nWhy does the model see what it sees? Pick an image, methods and a question.")
        with gr.Row():
            components = {**state, **_image_column(list(explorer.sources)), **_method_column()}
        _wire(blocks, Page(explorer), components)
    return blocks


def theme() -> gr.themes.Base:
    """Gradio's default look with the system's fonts (nothing fetched from the internet)."""
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(explorer: Explorer, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Serve the page on ``host:port``; ``block=False`` returns at once (tests)."""
    torch.set_grad_enabled(True)
    blocks = build(explorer)
    blocks.queue(default_concurrency_limit=1)
    blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=True,
        ssr_mode=False,
        theme=theme(),
        css=CSS,
        footer_links=[],
    )
    return blocks
