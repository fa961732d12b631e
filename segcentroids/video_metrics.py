"""Video consistency VC_n (VSPW, Miao et al., CVPR 2021) as a torchmetrics metric.

For every window of n consecutive frames of a video, the pixels whose ground truth is the same class in all n frames
(ignore pixels excluded) form the window's consistent area; VC_n of the window is the share of that area whose
prediction is also the same in all n frames and equal to the ground truth. A window with an empty consistent area is
skipped (the official script's NaN, dropped by its `nanmean`); a video shorter than n has no window.

Means (`average`):

- `"videos"` (default, as the project notes define it): the mean over the windows of each video, then the mean over
  the videos that have at least one window;
- `"windows"`: every window of every video weighs the same (what the official `VC_perclip.py` prints: `nanmean`
  over the pooled list of windows).

Differences from the official script (`sssdddwww2/CVPR2021_VSPW_Implement`, `VC_perclip.py`), all deliberate:
it compares the raw masks (so "others" and void pixels count as consistent ground truth), it only asks the
prediction to be constant, not correct (`require_correct=False` gives that rule), and its loop
`range(len(frames) - n)` leaves out the last window of every video; here every window is counted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric


class VideoConsistency(Metric):
    """VC_n for each n of `windows`, from the frames of videos given in order.

    `update(preds, target, video=None)`: `preds`, `target` int `[T, H, W]` (or one frame `[H, W]`), consecutive
    frames of a video, in order. `video` names the video of the frames (one id for all, or one per frame); frames of
    one video must arrive together and in order, and a new id ends the previous video. Without `video` the T frames
    are one whole video.

    State: per n, the sum of the window scores and the window count, the sum of the finished videos' means and the
    video count, all summed over processes (`dist_reduce_fx="sum"`). The last `max(windows) - 1` frames of the video
    in progress are kept outside the state; the video in progress is finished before the state is synchronised or
    computed. Exact under DDP when each process holds whole videos (`segcentroids.data.clips.VideoShardSampler`);
    a video split over processes loses the windows that straddle the cut.

    `compute()` -> `{"VC_<n>": float64 scalar}` (NaN when nothing was scored). Call `update`, not the module itself.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, windows: Sequence[int] = (8, 16), ignore_index: int = 255, require_correct: bool = True,
                 average: Literal["videos", "windows"] = "videos", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        windows = tuple(sorted({int(n) for n in windows}))
        if not windows or windows[0] < 2:
            raise ValueError(f"VideoConsistency windows must be integers >= 2, got {windows}")
        if average not in ("videos", "windows"):
            raise ValueError(f"VideoConsistency average must be 'videos' or 'windows', got {average!r}")
        self.windows = windows
        self._window_index = {n: i for i, n in enumerate(windows)}
        self.ignore_index = ignore_index
        self.require_correct = require_correct
        self.average = average
        for name in ("window_sum", "window_count", "video_sum", "video_count"):
            self.add_state(name, torch.zeros(len(windows), dtype=torch.float64), dist_reduce_fx="sum")
        self._clear_video()

    # ------------------------------------------------------------------------------------------------ frames
    def _clear_video(self) -> None:
        self._video: Hashable | None = None
        self._frames: deque[tuple[Tensor, Tensor]] = deque(maxlen=self.windows[-1])
        self._current_sum: Tensor | None = None  # this video's window scores, per n
        self._current_count: Tensor | None = None

    def update(self, preds: Tensor, target: Tensor, video: Hashable | Sequence[Hashable] | None = None) -> None:
        if preds.shape != target.shape or preds.dim() not in (2, 3):
            raise ValueError(f"VideoConsistency needs preds and target of one shape [T, H, W] or [H, W], got "
                             f"{tuple(preds.shape)} and {tuple(target.shape)}")
        if preds.dim() == 2:
            preds, target = preds[None], target[None]
        frames = preds.shape[0]
        if video is None:
            self.finish_video()
            ids: list[Hashable] = [object()] * frames  # one new video, ended below
        elif isinstance(video, (str, bytes)) or not isinstance(video, Sequence):
            ids = [video] * frames
        else:
            ids = list(video)
            if len(ids) != frames:
                raise ValueError(f"VideoConsistency: {len(ids)} video ids for {frames} frames")
        for index in range(frames):
            if self._current_sum is None or ids[index] != self._video:
                self.finish_video()
                self._video = ids[index]
            self._add_frame(preds[index], target[index])
        if video is None:
            self.finish_video()

    def _add_frame(self, pred: Tensor, target: Tensor) -> None:
        if self._frames and self._frames[-1][1].shape != target.shape:
            raise ValueError(f"VideoConsistency: frame of size {tuple(target.shape)} after frames of size "
                             f"{tuple(self._frames[-1][1].shape)} in video {self._video!r}")
        if self._current_sum is None:
            self._current_sum = torch.zeros(len(self.windows), dtype=torch.float64, device=self.device)
            self._current_count = torch.zeros_like(self._current_sum)
        self._frames.append((pred, target))
        # walk back from the newest frame: after the k-th newest frame the masks cover the window of the last k
        target_same = target != self.ignore_index
        pred_same = pred == target if self.require_correct else torch.ones_like(target_same)
        history = list(self._frames)
        for k in range(2, len(history) + 1):
            old_pred, old_target = history[-k]
            target_same = target_same & (old_target == target)
            pred_same = pred_same & (old_pred == pred)
            if k in self._window_index:
                self._add_window(self._window_index[k], target_same, pred_same)

    def _add_window(self, index: int, target_same: Tensor, pred_same: Tensor) -> None:
        area = target_same.sum(dtype=torch.float64)
        kept = (target_same & pred_same).sum(dtype=torch.float64)
        scored = (area > 0).double()
        score = kept / area.clamp_min(1)  # 0 when the area is empty (not counted)
        self.window_sum[index] += score
        self.window_count[index] += scored
        self._current_sum[index] += score
        self._current_count[index] += scored

    def finish_video(self) -> None:
        """Adds the video in progress to the per-video means (also done by a new video id, `sync` and `compute`)."""
        if self._current_sum is not None:
            scored = self._current_count > 0
            self.video_sum += torch.where(scored, self._current_sum / self._current_count.clamp_min(1),
                                          torch.zeros_like(self._current_sum))
            self.video_count += scored.double()
        self._clear_video()

    # --------------------------------------------------------------------------------------------- reduction
    def sync(self, *args: Any, **kwargs: Any) -> None:
        self.finish_video()  # before the states are gathered: the last video of this process counts too
        super().sync(*args, **kwargs)

    def compute(self) -> dict[str, Tensor]:
        self.finish_video()
        total, count = ((self.video_sum, self.video_count) if self.average == "videos"
                        else (self.window_sum, self.window_count))
        values = total / count  # 0 / 0 = NaN: nothing scored
        return {f"VC_{n}": values[i] for i, n in enumerate(self.windows)}

    def reset(self) -> None:
        super().reset()
        self._clear_video()

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """`update` (the frames are windows of a stream: there is no per-batch value)."""
        self.update(*args, **kwargs)
