"""Data order: every DP rank's micro-batches in Megatron's order, resumable, reweighting groups contiguous."""

from megatron_patch.data import DataParallelBatches, domain_name


def test_data_parallel_batches_are_contiguous_groups_and_resume():
    ranks = [list(DataParallelBatches(20, consumed_samples=4, micro_batch_size=2, dp_rank=r, dp_size=2))
             for r in range(2)]
    assert ranks[0][:2] == [[4, 5], [8, 9]] and ranks[1][:2] == [[6, 7], [10, 11]]
    assert len(ranks[0]) == len(DataParallelBatches(20, consumed_samples=4, micro_batch_size=2, dp_rank=0,
                                                    dp_size=2)) == 4
    wrapped = iter(DataParallelBatches(6, consumed_samples=0, micro_batch_size=2, dp_rank=1, dp_size=2, wrap=True))
    assert [next(wrapped) for _ in range(3)] == [[2, 3], [0, 1], [4, 5]]


def test_domain_names_drop_the_split_and_suffix():
    assert domain_name("data/wiki_train_text_document") == "wiki"
    assert domain_name("/x/code_validation_text_document") == "code"
    assert domain_name("books") == "books"
