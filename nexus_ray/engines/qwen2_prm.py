"""Qwen2.5-Math-PRM's architecture for transformers, which ships no class for it.

The published checkpoints point ``auto_map`` at remote code, which cannot be fetched here and
should not be trusted blindly anywhere. This class has the same module and weight names as
those checkpoints and as vLLM's ``Qwen2ForProcessRewardModel``: a Qwen2 trunk (``model.*``) and
a two-layer head ``score = Sequential(Linear(h, h), ReLU, Linear(h, num_labels))``. A directory
saved from it loads in vLLM natively, and a published one loads here.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import TokenClassifierOutput

ARCHITECTURE = "Qwen2ForProcessRewardModel"


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Per-token logits over (negative, positive); the step score is read at each step tag."""

    config_class = Qwen2Config

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Qwen2Model(config)
        self.score = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.ReLU(),
            nn.Linear(config.hidden_size, config.num_labels),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        logits = self.score(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return TokenClassifierOutput(loss=loss, logits=logits)
