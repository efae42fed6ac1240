"""The notebook studio: an ipywidgets view over :mod:`wanflow.explore` (no render, lock or history logic here).

    >>> from wanflow.studio import Studio
    >>> Studio(tracking_uri=None, output_dir="outputs")     # doctest: +SKIP   (the last line of a cell shows it)

Handlers only read the controls into a :class:`~wanflow.explore.StudioState`, call one plain function and write
what it returns into widgets. No ``with Output():`` blocks: every result goes into a widget's value, so the
click path behaves the same in plain pytest (``Button.click()``) and in a kernel.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import ipywidgets as w
from pydantic import ValidationError

from wanflow.explore import (
    SEED_MODES,
    Generated,
    HistoryRow,
    StudioState,
    controls_from_spec,
    do_generate,
    do_lock,
    field_errors,
    history_rows,
)
from wanflow.presets import DEFAULT_PRESET, PRESETS

_WIDE = w.Layout(width="98%")
_ERROR_STYLE = "color:#b00020;white-space:pre-wrap"


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=False)


class Studio(w.VBox):
    """The studio widget. Attributes are the controls (``prompt``, ``seed``, ``preset``, ``num_inference_steps``,
    ``guidance_scale``, ``guidance_scale_2``, ``width``, ...), the buttons (``generate_button``,
    ``lock_button``, ``refresh_button``) and the views (``progress``, ``video``, ``status``, ``errors``,
    ``history_box``).

    Args:
        preset: the preset shown first (default :data:`wanflow.presets.DEFAULT_PRESET`).
        tracking_uri: MLflow store (default: the project's).
        output_dir: renders go to ``output_dir/<time>-<preset>-<spec id>/``.
        history_limit: how many recent renders the history lists.
        options: :class:`wanflow.loading.LoadOptions` for every render.
    """

    def __init__(self, preset: str = DEFAULT_PRESET, tracking_uri: str | None = None,
                 output_dir: str | os.PathLike = "outputs", history_limit: int = 8, options=None):
        self.tracking_uri = tracking_uri or None
        self.output_dir = Path(output_dir)
        self.history_limit = history_limit
        self.options = options
        self.current_run_id: str | None = None
        self.last: Generated | None = None
        self.rows: list[HistoryRow] = []
        self._showing = False

        text = dict(layout=_WIDE, style={"description_width": "initial"})
        self.prompt = w.Textarea(description="prompt", placeholder="a red circle moving left on a blue background",
                                 rows=3, **text)
        self.negative_prompt = w.Textarea(description="negative_prompt", rows=2, **text)
        self.preset = w.Dropdown(options=list(PRESETS), description="preset")
        self.seed = w.IntText(description="seed")
        self.seed_mode = w.ToggleButtons(options=list(SEED_MODES), description="seed mode",
                                         style={"button_width": "90px"})
        self.num_inference_steps = w.IntText(description="steps")
        self.guidance_scale = w.FloatText(description="guidance")
        self.guidance_scale_2 = w.FloatText(description="guidance_2",
                                            tooltip="guidance_scale_2: the low-noise expert's CFG scale")
        self.flow_shift = w.FloatText(description="flow_shift")
        self.width = w.IntText(description="width")
        self.height = w.IntText(description="height")
        self.num_frames = w.IntText(description="frames")
        self.fps = w.IntText(description="fps")
        self._fields = {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "preset": self.preset,
            "seed": self.seed, "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale, "guidance_scale_2": self.guidance_scale_2,
            "flow_shift": self.flow_shift, "width": self.width, "height": self.height,
            "num_frames": self.num_frames, "fps": self.fps,
        }

        self.generate_button = w.Button(description="Generate", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="50%"))
        self.status = w.HTML()
        self.errors = w.HTML()
        self.video = w.Image(format="gif", layout=w.Layout(max_width="256px"))
        self.lock_name = w.Text(description="lock name", placeholder="hero-shot")
        self.lock_button = w.Button(description="Lock", icon="lock")
        self.lock_status = w.HTML()
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.history_box = w.VBox()

        self.preset.observe(self._on_preset, names="value")
        self.generate_button.on_click(lambda _: self.generate())
        self.lock_button.on_click(lambda _: self.lock())
        self.refresh_button.on_click(lambda _: self.refresh_history())

        controls = w.VBox([
            self.prompt, self.negative_prompt,
            w.HBox([self.preset, self.seed, self.seed_mode]),
            w.HBox([self.num_inference_steps, self.guidance_scale, self.guidance_scale_2, self.flow_shift]),
            w.HBox([self.width, self.height, self.num_frames, self.fps]),
            w.HBox([self.generate_button, self.progress]),
            self.errors, self.status,
        ])
        result = w.VBox([self.video, w.HBox([self.lock_name, self.lock_button]), self.lock_status])
        history = w.VBox([w.HBox([w.HTML("<b>Recent renders</b>"), self.refresh_button]), self.history_box])
        super().__init__([controls, result, history])
        self.show(StudioState.from_preset(preset))
        self.refresh_history()

    # --- controls <-> state -------------------------------------------------------------------------------------
    def read(self) -> StudioState:
        """The controls as a :class:`StudioState` (``guidance_scale_2`` None on one-expert presets)."""
        state = StudioState(preset=self.preset.value, prompt=self.prompt.value,
                            negative_prompt=self.negative_prompt.value, seed=self.seed.value,
                            seed_mode=self.seed_mode.value, num_inference_steps=self.num_inference_steps.value,
                            guidance_scale=self.guidance_scale.value, guidance_scale_2=self.guidance_scale_2.value,
                            flow_shift=self.flow_shift.value, width=self.width.value, height=self.height.value,
                            num_frames=self.num_frames.value, fps=self.fps.value)
        return state if state.two_experts else dataclasses.replace(state, guidance_scale_2=None)

    def show(self, state: StudioState) -> None:
        """Put ``state`` into the controls (without re-applying preset defaults) and hide ``guidance_2`` on
        one-expert presets."""
        self._showing = True
        try:
            for name, widget in self._fields.items():
                value = getattr(state, name)
                if value is not None:
                    widget.value = value
            self.seed_mode.value = state.seed_mode
            self.guidance_scale_2.layout.display = None if state.two_experts else "none"
        finally:
            self._showing = False
        self._clear_errors()

    def _on_preset(self, change) -> None:
        if self._showing:
            return
        previous = dataclasses.replace(self.read(), preset=change["old"])
        self.show(previous.with_preset(change["new"]))

    # --- errors -------------------------------------------------------------------------------------------------
    def _clear_errors(self) -> None:
        self.errors.value = ""
        for widget in self._fields.values():
            widget.layout.border = None

    def _show_errors(self, problems: dict[str, str]) -> None:
        self.errors.value = "".join(
            f"<div style='{_ERROR_STYLE}'><b>{_escape(field or 'error')}</b>: {_escape(message)}</div>"
            for field, message in problems.items()
        )
        for field in problems:
            if field in self._fields:
                self._fields[field].layout.border = "2px solid #b00020"

    # --- actions ------------------------------------------------------------------------------------------------
    def generate(self) -> Generated | None:
        """Render the controls' spec with a live progress bar, show its preview, select it for locking and
        refresh the history. Returns what :func:`do_generate` returned, or None when the controls are invalid
        (field errors shown, nothing rendered or logged) or the render failed (the error shown)."""
        self._clear_errors()
        state = self.read()
        try:
            spec = state.to_spec()
        except ValidationError as err:
            self._show_errors(field_errors(err))
            return None
        self.progress.max, self.progress.value = spec.num_inference_steps, 0
        self.progress.bar_style = ""
        self.status.value = f"rendering {spec.preset}, seed <b>{spec.seed}</b> …"
        self.generate_button.disabled = True

        def on_step(event) -> None:
            self.progress.value = event.step + 1
            self.progress.description = f"{event.step + 1}/{event.total}"

        try:
            made = do_generate(dataclasses.replace(state, seed=spec.seed, seed_mode="keep"),
                               tracking_uri=self.tracking_uri, output_dir=self.output_dir, options=self.options,
                               on_step=on_step)
        except Exception as err:  # a render failure: its run is already FAILED; say so in the UI
            self.progress.bar_style = "danger"
            self.status.value = ""
            self._show_errors({"": f"{type(err).__name__}: {err}"})
            return None
        finally:
            self.generate_button.disabled = False
        self.progress.bar_style = "success"
        self.last = made
        self.show(dataclasses.replace(made.state, seed_mode=state.seed_mode))
        self._select(made.run_id)
        self.video.value = made.result.files.preview.read_bytes()
        total = sum(made.result.timings.values())
        self.status.value = (f"seed used: <b>{made.result.seed}</b> · run <code>{made.run_id}</code> · "
                             f"{spec.num_frames} frames {spec.width}x{spec.height} · {total:.1f} s · "
                             f"<code>{_escape(str(made.result.video))}</code>")
        self.refresh_history()
        return made

    def lock(self):
        """Lock the selected render (the last generated, or one loaded from the history) under the name in
        ``lock_name``. Returns the :class:`wanflow.locks.Lock`, or None with the error shown."""
        from wanflow.locks import LockError

        try:
            held = do_lock(self.current_run_id, self.lock_name.value, self.tracking_uri)
        except LockError as err:
            self.lock_status.value = f"<span style='{_ERROR_STYLE}'>{_escape(str(err))}</span>"
            return None
        self.lock_status.value = f"locked run <code>{held.run_id}</code> as <b>{_escape(held.name)}</b>"
        self.refresh_history()
        return held

    def load(self, row: HistoryRow) -> None:
        """Put a past render's settings (and seed, mode ``keep``) into the controls and select it for locking."""
        try:
            state = row.state()
        except ValueError as err:
            self._show_errors({"": str(err)})
            return
        self.show(state)
        self._select(row.run_id)
        thumbnail = row.thumbnail(256)
        if thumbnail:
            self.video.value = thumbnail
        self.status.value = f"loaded run <code>{row.run_id}</code> (seed {row.seed})"

    def load_spec(self, spec) -> None:
        """Put a :class:`wanflow.RenderSpec`'s settings into the controls."""
        self.show(controls_from_spec(spec))

    def _select(self, run_id: str | None) -> None:
        self.current_run_id = run_id
        self.lock_button.description = f"Lock {run_id[:8]}" if run_id else "Lock"

    def refresh_history(self) -> list[HistoryRow]:
        """Re-read the newest renders from MLflow into the history list (thumbnail, label, Load button)."""
        try:
            self.rows = history_rows(self.tracking_uri, self.history_limit)
        except Exception as err:  # an unreachable store must not break the studio
            self.history_box.children = [w.HTML(f"<span style='{_ERROR_STYLE}'>{_escape(str(err))}</span>")]
            return []
        items = []
        for row in self.rows:
            thumbnail = row.thumbnail()
            picture = (w.Image(value=thumbnail, format="gif", layout=w.Layout(width="96px")) if thumbnail
                       else w.HTML("<div style='width:96px'>(no preview)</div>"))
            button = w.Button(description="Load", tooltip=f"load the settings of run {row.run_id}",
                              layout=w.Layout(width="70px"))
            button.on_click(lambda _, row=row: self.load(row))
            items.append(w.HBox([picture, button, w.HTML(_escape(row.label))]))
        self.history_box.children = items or [w.HTML("no renders yet")]
        return self.rows

    def history_buttons(self) -> list[w.Button]:
        """The history's Load buttons, newest render first (for tests and scripting)."""
        return [child.children[1] for child in self.history_box.children if isinstance(child, w.HBox)]
