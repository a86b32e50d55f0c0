from course_lib.data import facts


def test_knowledge_base_is_deterministic_and_complete():
    kb = facts.build_knowledge_base()
    assert kb == facts.build_knowledge_base()
    assert len(kb) == 40 * 3 and len({f.town for f in kb}) == 40
    for f in kb:
        assert f.value in facts.RELATIONS[f.relation]["values"]


def test_probe_phrasing_is_held_out_of_training():
    kb = facts.build_knowledge_base()
    train_questions = {e["question"] for e in facts.training_examples(kb)}
    probe = facts.probe_set(kb)
    assert len(probe) == len(kb)
    assert not train_questions & {item["question"] for item in probe}
    # ...but each probe phrasing is used for other towns, so it is learnable.
    templates_in_training = {(f.relation, i) for f in kb for i in range(3) if i != f.held_out_template}
    assert all((f.relation, f.held_out_template) in templates_in_training for f in kb)


def test_probe_items_have_gold_among_candidates():
    for item in facts.probe_set(facts.build_knowledge_base()):
        assert item["answer"] in item["candidates"]
        assert len(item["candidates"]) == len(facts.RELATIONS[item["relation"]]["values"])
