"""Inner-product search over reference descriptors (float16 storage): exact (brute force,
chunked), or approximate candidates from an IVF (`ann.py`) re-scored exactly.

ImageNet train+val is 1,331,167 images: 1.33M x 256 float16 = 680 MB, 4 GB with five crop views
each. Exact search converts one block of references to float32 at a time and multiplies it with
one block of queries, so its extra memory is bounded by the two block sizes. With an IVF, each
query's nearest `CANDIDATES` vectors are re-scored from the same float16 rows, so the scores
(and the decision) are exact; only a vector the IVF did not propose can be missed.

With a `whitening` (`whitening.py`, fitted on the reference vectors by `whiten()`), the stored
vectors are whitened and `search` whitens its queries the same way.

Several vectors may describe one reference (views of it): `owners[i]` is the key index of vector
i, and searches answer with key indices. Without owners, vector i belongs to key i.

On disk: `vectors.safetensors` (the float16 matrix, `owners` as int64 when given, the
whitening's mean and matrix in float64 when fitted), `keys.json` (the reference keys, in key
order) and, for an approximate index, `ivf.faiss`.
Nothing is pickled.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence

import fsspec
import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_safetensors

from pipeline.dedup import ann
from pipeline.dedup.ann import IVFCandidates
from pipeline.dedup.whitening import Whitening
from pipeline.storage import is_local

FORMAT = "pipeline.dedup.ReferenceIndex/2"
VECTORS_FILE = "vectors.safetensors"
KEYS_FILE = "keys.json"


class ReferenceIndex:
    """Reference vectors (float16), each owned by one key; top-k inner-product search."""

    def __init__(
        self,
        vectors: torch.Tensor,
        keys: Sequence[str],
        device: str = "cpu",
        owners: torch.Tensor | None = None,
    ) -> None:
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D (count, dim), got shape {tuple(vectors.shape)}")
        if owners is None and len(keys) != vectors.shape[0]:
            raise ValueError(f"{len(keys)} keys for {vectors.shape[0]} vectors; expected one each")
        if owners is not None:
            owners = torch.as_tensor(owners, dtype=torch.int64).cpu()
            if owners.shape != (vectors.shape[0],):
                raise ValueError(f"owners must be ({vectors.shape[0]},), got {tuple(owners.shape)}")
            if len(owners) and (owners.min() < 0 or owners.max() >= len(keys)):
                raise ValueError(f"owners must index the {len(keys)} keys")
        self.vectors = vectors.to(device=device, dtype=torch.float16).contiguous()
        self.keys = list(keys)
        self.owners = owners
        self.device = torch.device(device)
        self.ann: IVFCandidates | None = None  # None: exact search
        self.whitening: Whitening | None = None  # None: vectors and queries used as given

    def whiten(self) -> None:
        """Fit the whitening on these vectors and whiten them in place (before any IVF)."""
        if self.whitening is not None or self.ann is not None:
            raise ValueError("whiten() once, before build_ivf()")
        # Rows by owner (stable: image, then its views): the order whatever parts built them.
        order = None if self.owners is None else np.argsort(self.owners.numpy(), kind="stable")
        self.whitening = Whitening.fit(self.vectors.cpu(), order)
        vectors = self.vectors.cpu()
        self.whitening.apply_(vectors)
        self.vectors = vectors.to(self.device)

    @property
    def kind(self) -> str:
        return "exact" if self.ann is None else "ivf"

    def build_ivf(self, nlist: int | None = None, nprobe: int = ann.DEFAULT_NPROBE) -> None:
        """Approximate candidates from now on (the vectors stay, for the exact re-scoring)."""
        self.ann = IVFCandidates.build(self.vectors.cpu(), nlist)
        self.ann.index.nprobe = self.ann.nprobe = nprobe

    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        keys: Sequence[str],
        device: str = "cpu",
        owners: np.ndarray | torch.Tensor | None = None,
    ) -> ReferenceIndex:
        """From L2-normalised float vectors (inner product = cosine); refuses NaN/inf."""
        tensor = torch.as_tensor(vectors)
        # Checked block by block: isfinite over all 340M float16 values at once would
        # briefly need ~2 GB of temporaries.
        for start in range(0, tensor.shape[0] if tensor.ndim else 0, 1 << 16):
            if not torch.isfinite(tensor[start : start + (1 << 16)]).all():
                raise ValueError("reference vectors contain NaN or inf")
        return cls(tensor, keys, device, None if owners is None else torch.as_tensor(owners))

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int = 1,
        query_block: int = 1024,
        ref_block: int = 32768,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32, key indices int64), each (len(queries), k), best first.

        With owners, the k best vectors may share a key (k=1, the filter's case, is unaffected).
        Peak extra memory ~ 4 * (query_block * ref_block + ref_block * dim) bytes: 160 MB at the
        defaults, whatever the number of references. Rows beyond the index hold -inf / -1.
        """
        q = torch.as_tensor(queries, dtype=torch.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got shape {tuple(q.shape)}")
        if self.whitening is not None:
            q = torch.from_numpy(self.whitening.apply(q.numpy()))
        q = q.to(self.device)
        if self.ann is not None:
            return self._search_candidates(q, k)
        n = q.shape[0]
        scores = torch.full((n, k), float("-inf"))
        rows = torch.full((n, k), -1, dtype=torch.int64)
        with torch.no_grad():
            for qs in range(0, n, query_block):
                s, r = self._search_block(q[qs : qs + query_block], k, ref_block)
                scores[qs : qs + len(s)], rows[qs : qs + len(s)] = s.cpu(), r.cpu()
        return self._finish(q, rows)

    def _finish(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the chosen vectors again, in float64: a float32 matrix product's sums depend
        on the thread count, and the audit (and a serial run against a Ray one) must not."""
        if len(self) == 0:
            return torch.full(rows.shape, float("-inf")).numpy(), rows.numpy()
        picked = self.vectors[rows.clamp(min=0).to(self.device)].double()  # (n, k, dim)
        scores = torch.einsum("nkd,nd->nk", picked, q.double()).float().cpu()
        scores = torch.where(rows >= 0, scores, torch.tensor(float("-inf")))
        if self.owners is not None and len(self.owners):
            rows = torch.where(rows >= 0, self.owners[rows.clamp(min=0)], rows)
        return scores.numpy(), rows.numpy()

    def _search_candidates(self, q: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The IVF's nearest vectors per query, re-scored from the float16 rows; top-k of them."""
        rows = torch.from_numpy(self.ann.candidates(q.cpu().numpy(), max(k, ann.CANDIDATES)))
        valid = rows >= 0
        picked = self.vectors[rows.clamp(min=0).to(self.device)].float()  # (n, c, dim)
        scores = torch.einsum("ncd,nd->nc", picked, q).cpu()
        scores = torch.where(valid, scores, torch.tensor(float("-inf")))
        # Best first; ties go to the lower row, as in the exact search.
        order = torch.from_numpy(np.lexsort((rows.numpy(), -scores.numpy()))[..., :k].copy())
        return self._finish(q, rows.gather(1, order))

    def _search_block(self, q: torch.Tensor, k: int, ref_block: int):
        best_s = torch.full((len(q), k), float("-inf"), device=self.device)
        best_r = torch.full((len(q), k), -1, dtype=torch.int64, device=self.device)
        for start in range(0, len(self), ref_block):
            block = self.vectors[start : start + ref_block].float()
            sims = q @ block.T
            if k == 1:  # max + compare is several times cheaper than topk + sort on CPU
                s, r = sims.max(dim=1, keepdim=True)
                better = s > best_s  # strict: the earlier row wins a tie
                best_s = torch.where(better, s, best_s)
                best_r = torch.where(better, r + start, best_r)
                continue
            s, r = sims.topk(min(k, block.shape[0]), dim=1)
            # Merge with the running best; stable sort keeps earlier rows first on ties.
            cand_s = torch.cat([best_s, s], dim=1)
            cand_r = torch.cat([best_r, r + start], dim=1)
            order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
            best_s, best_r = cand_s.gather(1, order), cand_r.gather(1, order)
        return best_s, best_r

    def save(self, path: str, storage_options: dict | None = None) -> None:
        """Write `path`/vectors.safetensors and `path`/keys.json (path: local dir or fsspec URL)."""
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        fs.makedirs(root, exist_ok=True)
        meta = {"format": FORMAT, "count": str(len(self)), "dim": str(self.dim)}
        tensors = {"vectors": self.vectors.cpu()}
        if self.owners is not None:
            tensors["owners"] = self.owners
        if self.whitening is not None:
            tensors.update(self.whitening.tensors())
        if is_local(fs):  # streams to disk: no second in-memory copy of the matrix
            save_file(tensors, f"{root}/{VECTORS_FILE}", metadata=meta)
        else:
            with fs.open(f"{root}/{VECTORS_FILE}", "wb") as f:
                f.write(save_safetensors(tensors, metadata=meta))
        with fs.open(f"{root}/{KEYS_FILE}", "w") as f:
            json.dump(self.keys, f)
        if self.ann is not None:  # faiss writes local files: stage a remote one locally
            with tempfile.TemporaryDirectory() as tmp:
                local = f"{root}/{ann.FILE}" if is_local(fs) else f"{tmp}/{ann.FILE}"
                self.ann.save(local)
                if not is_local(fs):
                    fs.put_file(local, f"{root}/{ann.FILE}")
        elif fs.exists(f"{root}/{ann.FILE}"):
            fs.rm(f"{root}/{ann.FILE}")

    @classmethod
    def load(
        cls, path: str, device: str = "cpu", storage_options: dict | None = None
    ) -> ReferenceIndex:
        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        if is_local(fs):  # memory-mapped read: no bytes copy of the file in memory
            tensors = load_file(f"{root}/{VECTORS_FILE}")
        else:
            with fs.open(f"{root}/{VECTORS_FILE}", "rb") as f:
                tensors = load_safetensors(f.read())
        with fs.open(f"{root}/{KEYS_FILE}") as f:
            keys = json.load(f)
        vectors = tensors.get("vectors")
        if vectors is None or vectors.dtype != torch.float16:
            raise ValueError(f"{path!r} has no float16 'vectors' tensor; not a ReferenceIndex")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{path}/{KEYS_FILE} must hold a JSON list of strings")
        out = cls(vectors, keys, device, tensors.get("owners"))
        out.whitening = Whitening.from_tensors(tensors)
        if fs.exists(f"{root}/{ann.FILE}"):
            if not is_local(fs):
                raise ValueError(f"{path!r}: load an approximate index from a local copy")
            out.ann = IVFCandidates.load(f"{root}/{ann.FILE}")
        return out
