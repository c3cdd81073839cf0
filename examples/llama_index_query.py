"""A LlamaIndex query engine over a few local documents, with RSDLLM, printing each step's reward.

    python examples/llama_index_query.py
"""

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
                  f"{event.text.strip()}   (span {event.span_id})")


get_dispatcher().add_event_handler(PrintSteps())
docs = [Document(text="Dee keeps her stamps in a blue album."), Document(text="Kim sells pens at the market.")]
index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))  # offline embedding
engine = index.as_query_engine(llm=RSDLLM(), similarity_top_k=1)
print(engine.query("Dee has 25 stamps. She buys 16 more. How many stamps does Dee have now?"))
