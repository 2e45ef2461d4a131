"""Contract over every registered selector, and the equivalences between them."""

import pytest
import torch

from hybridft import architecture
from hybridft.errors import HybridftError
from hybridft.recipe import validate_recipe
from hybridft.registry import SELECTORS
from hybridft.training.loop import select_parameters

from .helpers import snapshot, tiny_classifier

# one representative config per registered selector; a new selector must add itself here
EXAMPLES = {
    "full": {"name": "full"},
    "layers": {"name": "layers", "top_k": 1, "head": True},
}


def test_every_registered_selector_has_an_example_and_a_doc():
    assert set(SELECTORS.names()) == set(EXAMPLES)
    assert all(e.doc for e in SELECTORS.entries())


def _two_steps(model, selector_configs, weight_decay=0.1):
    selectors = [SELECTORS.build(validate_recipe(
        {"data": {"train": "x"}, "stages": [{"select": [c]}]}).stages[0].select[0]) for c in selector_configs]
    for s in selectors:
        model = s.prepare(model)
    select_parameters(model, selectors)
    from hybridft.recipe import OptimizerSpec
    from hybridft.training.optim import build_optimizer

    opt = build_optimizer(OptimizerSpec(lr=1e-2, weight_decay=weight_decay), model)
    torch.manual_seed(0)
    ids = torch.randint(5, 30, (4, 7))
    for _ in range(2):
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 0, 1]))
        loss.backward()
        for s in selectors:
            s.after_backward(model)
        opt.step()
        opt.zero_grad()
        for s in selectors:
            s.after_step(model)
    return model


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_selected_change_and_everything_else_is_bit_identical(tiny_model, name):
    model = tiny_classifier(tiny_model, dropout=0.0)
    before = snapshot(model)
    model = _two_steps(model, [EXAMPLES[name]])
    after = snapshot(model)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained
    for n in before:
        if n in trained:
            assert not torch.equal(before[n], after[n]), f"{n} was selected but did not change"
        else:
            assert torch.equal(before[n], after[n]), f"{n} was frozen but changed"


def test_layers_with_every_layer_embeddings_and_head_equals_full(tiny_model):
    a = _two_steps(tiny_classifier(tiny_model, dropout=0.0), [{"name": "full"}])
    b = _two_steps(tiny_classifier(tiny_model, dropout=0.0),
                   [{"name": "layers", "top_k": 2, "embeddings": True, "head": True}])
    sa, sb = snapshot(a), snapshot(b)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_layers_top_k_picks_the_top_layers_and_head(tiny_model):
    model = tiny_classifier(tiny_model)
    names = SELECTORS.build(validate_recipe(
        {"data": {"train": "x"}, "stages": [{"select": [{"name": "layers", "top_k": 1}]}]}).stages[0].select[0]
    ).trainable(model)
    assert any(".layer.1." in n for n in names) and not any(".layer.0." in n for n in names)
    assert "classifier.weight" in names and "bert.pooler.dense.weight" in names
    assert not any("embeddings" in n for n in names)
    assert architecture.num_layers(model) == 2


def test_layers_errors(tiny_model):
    model = tiny_classifier(tiny_model)

    def build(cfg):
        spec = validate_recipe({"data": {"train": "x"}, "stages": [{"select": [cfg]}]}).stages[0].select[0]
        return SELECTORS.build(spec).trainable(model)

    with pytest.raises(HybridftError, match="only 2 layers"):
        build({"name": "layers", "top_k": 5})
    with pytest.raises(HybridftError, match="layers 0..1"):
        build({"name": "layers", "indices": [7]})
    with pytest.raises(HybridftError, match="matches no parameter"):
        build({"name": "layers", "top_k": 0, "patterns": ["nothing_like_this"]})
    assert build({"name": "layers", "top_k": 0, "head": False}) == set()  # the loop turns this into an error
