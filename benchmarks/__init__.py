"""lic_kd's speed, measured against baselines in the same run (`make bench`, `python -m benchmarks`).

Each benchmark is a plain script (`python -m benchmarks.NAME [--smoke] [--out DIR] [--repeats R]`) that prints
its ratios against a baseline measured in the same run (interleaved repeats, medians), with the absolute
figures, device, threads, torch version and load average, and writes them to `<out>/NAME.json`
(default `benchmarks/results/`, `benchmarks/results/smoke/` with --smoke). Benchmarks are not tests: nothing here
asserts a timing; the JSON says per goal whether it was met.
"""

# name -> the ratios its default settings write (tests/test_bench.py checks every one is there)
BENCHMARKS = {
    "train_step": ("train_step_overhead", "train_step_overhead_of_medians"),
    "kd_step": (
        "kd_step_N16",
        "kd_step_N32",
        "kd_step_N48",
        "kd_group_N16,32",
        "kd_group_N16,32,48",
        "kd_group_study",
        *(f"kd_shared_k{k}_N{n}" for n in (16, 32, 48) for k in (1, 2, 4, 8)),
        "teacher_share_N16",
        "teacher_share_N32",
        "teacher_share_N48",
        "teacher_latents_only_vs_forward",
    ),
    "data_pipeline": ("loader_vs_model", "loader_uncached_vs_model", "cache_speedup"),
    "loader_workers": ("workers_1_vs_in_process", "workers_2_vs_in_process", "gpu_need_vs_one_worker"),
    "evaluate_parity": (
        "evaluate_time",
        "evaluate_time_1thread",
        "bpp_file_vs_strings",
        "bpp_strings_parity",
        "psnr_parity",
        "ms_ssim_parity",
    ),
    "decode_fps": (
        "decode_fps_N16_vs_goal",
        *(f"decode_fps_N{n}_vs_N128" for n in (16, 32, 64)),
        *(
            f"{r}_N{n}"
            for n in (16, 32, 64, 128)
            for r in (
                "entropy_share",
                "synthesis_share",
                "exact_fast_entropy_model_speedup",
                "lic_kd_vs_contiguous",
                "no_grad_speedup",
                "channels_last_all_speedup",
                "other_threads_speedup",
            )
        ),
    ),
    "precision": (
        "bf16_step_speedup_teacher",
        "bf16_step_speedup_student",
        "bf16_quality_gap_vs_seeds_teacher",
        "bf16_quality_gap_vs_seeds_student",
    ),
}
