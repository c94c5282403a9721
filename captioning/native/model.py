"""Show, Attend and Tell: images (B, 3, S, S) -> a CNN feature grid -> words, with soft attention.

The encoder is a small CNN trained from scratch (our world needs no ImageNet features). The decoder
is an LSTM that, at every word, attends over the encoder's grid with additive attention
(Bahdanau), gates the attended context with a scalar computed from its state (paper, sec. 4.2.1)
and is trained with teacher forcing plus the doubly stochastic attention regulariser (eq. 14).
"""

from __future__ import annotations

import torch
from torch import nn

from captioning.native.config import ModelConfig


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Encoder(nn.Module):
    """(B, 3, S, S) -> (B, G*G, C): each stage halves the grid, then refines at that scale."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in config.encoder_channels:
            layers += [_conv(cin, cout, 2), _conv(cout, cout, 1)]
            cin = cout
        self.cnn = nn.Sequential(*layers)
        g = config.grid_size
        # Where a feature sits matters for "left of"/"above": give the grid a learned position.
        self.position = nn.Parameter(torch.zeros(1, g * g, cin))
        nn.init.normal_(self.position, std=0.02)
        self.out_channels = cin

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.cnn(images)  # (B, 3, S, S) -> (B, C, G, G)
        feats = feats.flatten(2).transpose(1, 2)  # (B, C, G, G) -> (B, G*G, C)
        return feats + self.position  # (B, G*G, C)


class Attention(nn.Module):
    """Additive attention: score_i = w . tanh(W_f f_i + W_h h)."""

    def __init__(self, feat_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.feat_proj = nn.Linear(feat_dim, attention_dim)
        self.hidden_proj = nn.Linear(hidden_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Computed once per image, reused at every word."""
        return self.feat_proj(feats)  # (B, N, C) -> (B, N, A)

    def forward(
        self, feats: torch.Tensor, feats_proj: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.tanh(feats_proj + self.hidden_proj(hidden).unsqueeze(1))  # (B, N, A)
        alpha = torch.softmax(self.score(e).squeeze(2), dim=1)  # (B, N, A) -> (B, N)
        context = torch.bmm(alpha.unsqueeze(1), feats).squeeze(1)  # (B, 1, N) @ (B, N, C) -> (B, C)
        return context, alpha


State = tuple[torch.Tensor, torch.Tensor]  # LSTM (h, c), each (B, H)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, feat_dim: int):
        super().__init__()
        h = config.hidden_dim
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.attention = Attention(feat_dim, h, config.attention_dim)
        self.init_h = nn.Linear(feat_dim, h)
        self.init_c = nn.Linear(feat_dim, h)
        self.gate = nn.Linear(h, feat_dim)
        self.lstm = nn.LSTMCell(config.embed_dim + feat_dim, h)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(h, config.vocab_size)

    def init_state(self, feats: torch.Tensor) -> State:
        mean = feats.mean(dim=1)  # (B, N, C) -> (B, C)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # 2 x (B, H)

    def step(
        self, tokens: torch.Tensor, state: State, feats: torch.Tensor, feats_proj: torch.Tensor
    ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """One word: tokens (B,) -> logits (B, V), new state, attention (B, N)."""
        h, c = state
        context, alpha = self.attention(feats, feats_proj, h)  # (B, C), (B, N)
        context = torch.sigmoid(self.gate(h)) * context  # (B, C): the paper's gating scalar beta
        x = torch.cat([self.embed(tokens), context], dim=1)  # (B, E + C)
        h, c = self.lstm(x, (h, c))  # (B, H) each
        return self.out(self.dropout(h)), (h, c), alpha

    def forward(
        self, feats: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: captions (B, T) -> logits (B, T-1, V), alphas (B, T-1, N)."""
        feats_proj = self.attention.project(feats)  # (B, N, A)
        state = self.init_state(feats)
        logits, alphas = [], []
        for t in range(captions.size(1) - 1):
            step_logits, state, alpha = self.step(captions[:, t], state, feats, feats_proj)
            logits.append(step_logits)
            alphas.append(alpha)
        return torch.stack(logits, 1), torch.stack(alphas, 1)  # (B, T-1, V), (B, T-1, N)


class CaptionModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.encoder.out_channels)
        # Training-only auxiliary head: which words does the caption contain? (see concept_loss)
        self.concepts = nn.Linear(self.encoder.out_channels, config.vocab_size)

    def forward(
        self, images: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(self.encoder(images), captions)

    def forward_train(
        self, images: torch.Tensor, captions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing plus the concept head: logits, alphas, concept logits (B, V)."""
        feats = self.encoder(images)  # (B, N, C)
        logits, alphas = self.decoder(feats, captions)
        return logits, alphas, self.concepts(feats.amax(dim=1))  # (B, N, C) -> (B, C) -> (B, V)


def caption_loss(
    logits: torch.Tensor,
    alphas: torch.Tensor,
    captions: torch.Tensor,
    alpha_c: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy on the next word plus the doubly stochastic regulariser.

    logits (B, T-1, V) predict captions[:, 1:]; padding (id 0) is ignored. The regulariser pushes
    every grid cell's attention, summed over the words, towards 1 (paper, eq. 14).
    """
    targets = captions[:, 1:]  # (B, T-1)
    ce = nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=0
    )
    mask = (targets != 0).unsqueeze(2).to(alphas.dtype)  # (B, T-1, 1)
    attention_sum = (alphas * mask).sum(dim=1)  # (B, T-1, N) -> (B, N)
    regulariser = ((1.0 - attention_sum) ** 2).mean()
    return ce + alpha_c * regulariser


def concept_loss(concept_logits: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """Multi-label loss: predict, from the max-pooled grid, every word the caption contains.

    An auxiliary objective for training from scratch: it hands the encoder a direct signal for
    each visual word (colours, shapes), which the caption loss only reaches through attention
    and the LSTM. Special tokens (ids 0-3) are not concepts.
    """
    targets = torch.zeros_like(concept_logits)  # (B, V)
    targets.scatter_(1, captions, 1.0)
    targets[:, :4] = 0.0
    return nn.functional.binary_cross_entropy_with_logits(concept_logits[:, 4:], targets[:, 4:])
