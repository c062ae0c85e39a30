/* CPU detection, the kernel-table lookup and the load-time CPU check.
 * points. Everything in this file is compiled for baseline x86-64 (LMK_TARGET_BASELINE
 * forbids AVX even under -march=native), so it runs on any x86-64 CPU. */
#include "lmk_internal.h"
#ifdef LMK_X86
#include <cpuid.h>
#include <unistd.h>

enum {
    F_AVX2 = 1 << 0,     /* AVX2, with the OS saving YMM state */
    F_FMA = 1 << 1,
    F_F16C = 1 << 2,
    F_AVX512 = 1 << 3,   /* AVX512F + BW + VL, with the OS saving ZMM and opmask state */
    F_VNNI = 1 << 4,     /* AVX512_VNNI */
    F_NO_OS_YMM = 1 << 5, /* the CPU has AVX but the OS does not save YMM state */
    F_VBMI2 = 1 << 6     /* AVX512_VBMI + AVX512_VBMI2 */
};

LMK_TARGET_BASELINE static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Feature bits from cpuid/xgetbv; read anew each call (no cached state). */
LMK_TARGET_BASELINE static unsigned cpu_features(void) {
    unsigned a, b, c, d, f = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
    const int ymm = avx && (xcr0 & 0x6) == 0x6;        /* XMM + YMM state */
    const int zmm = ymm && (xcr0 & 0xE0) == 0xE0;      /* opmask + ZMM_Hi256 + Hi16_ZMM state */
    unsigned b7 = 0, c7 = 0;
    if (__get_cpuid_max(0, 0) >= 7) { __cpuid_count(7, 0, a, b7, c7, d); }
    const int avx2 = (b7 >> 5) & 1;
    const int avx512 = ((b7 >> 16) & 1) && ((b7 >> 30) & 1) && ((b7 >> 31) & 1);   /* F, BW, VL */
    const int vnni = (c7 >> 11) & 1, vbmi2 = ((c7 >> 1) & 1) && ((c7 >> 6) & 1);
    if (ymm && avx2) f |= F_AVX2;
    if (ymm && fma) f |= F_FMA;
    if (ymm && f16c) f |= F_F16C;
    if (zmm && avx512) f |= F_AVX512;
    if (zmm && avx512 && vnni) f |= F_VNNI;
    if (zmm && avx512 && vbmi2) f |= F_VBMI2;
    if (avx && !ymm) f |= F_NO_OS_YMM;
    return f;
}

LMK_TARGET_BASELINE int lmk_cpu_supports(int level) {
    const unsigned base = F_AVX2 | F_FMA | F_F16C, f = cpu_features();
    switch (level) {
    case LMK_LEVEL_GENERIC: return 1;
    case LMK_LEVEL_AVX2: return (f & base) == base;
    case LMK_LEVEL_AVX512VNNI: return (f & (base | F_AVX512 | F_VNNI)) == (base | F_AVX512 | F_VNNI);
    case LMK_LEVEL_AVX512VBMI2: return (f & (base | F_AVX512 | F_VNNI | F_VBMI2)) == (base | F_AVX512 | F_VNNI | F_VBMI2);
    default: return 0;
    }
}

LMK_TARGET_BASELINE int lmk_cpu_baseline_ok(const char **missing) {
    /* Indexed by the missing subset of {AVX2, FMA, F16C}. */
    static const char *const names[8] = {
        "", "AVX2", "FMA", "AVX2 FMA", "F16C", "AVX2 F16C", "FMA F16C", "AVX2 FMA F16C",
    };
    const unsigned f = cpu_features(), lack = ~f & (F_AVX2 | F_FMA | F_F16C);
    if (missing) *missing = (f & F_NO_OS_YMM) ? "OS support for AVX (YMM state)" : names[lack];
    return lack == 0;
}

/* A CPU without the baseline would die of SIGILL in the first AVX2 instruction of the
 * Swift code; say why instead. Runs before main (priority 101, the
 * earliest allowed) and uses only write(2) and _exit(2). */
__attribute__((constructor(101))) LMK_TARGET_BASELINE static void lmk_check_cpu_baseline(void) {
    const char *missing = "";
    if (lmk_cpu_baseline_ok(&missing)) return;
    static const char pre[] = "error: this CPU lacks ";
    static const char post[] = "; lmkit's build needs an x86-64 CPU with AVX2, FMA and F16C (x86-64-v3)\n";
    char line[256];
    size_t n = 0;
    for (const char *s = pre; *s; s++) line[n++] = *s;
    for (const char *s = missing; *s && n < 120; s++) line[n++] = *s;
    for (const char *s = post; *s; s++) line[n++] = *s;
    ssize_t unused = write(2, line, n);
    (void)unused;
    _exit(1);
}

LMK_TARGET_BASELINE int lmk_best_level(void) {
    for (int level = LMK_LEVEL_COUNT - 1; level > LMK_LEVEL_GENERIC; level--)
        if (lmk_cpu_supports(level)) return level;
    return LMK_LEVEL_GENERIC;
}

LMK_TARGET_BASELINE const lmk_kernels *lmk_kernels_at(int level) {
    if (!lmk_cpu_supports(level)) return 0;
    switch (level) {
    case LMK_LEVEL_GENERIC: return &lmk_table_generic;
    case LMK_LEVEL_AVX2: return &lmk_table_avx2;
    case LMK_LEVEL_AVX512VNNI: return &lmk_table_avx512vnni;
    case LMK_LEVEL_AVX512VBMI2: return &lmk_table_avx512vbmi2;
    default: return 0;
    }
}

#else /* not x86: only the generic level exists */

int lmk_cpu_supports(int level) { return level == LMK_LEVEL_GENERIC; }
int lmk_best_level(void) { return LMK_LEVEL_GENERIC; }
const lmk_kernels *lmk_kernels_at(int level) { return level == LMK_LEVEL_GENERIC ? &lmk_table_generic : 0; }
int lmk_cpu_baseline_ok(const char **missing) { if (missing) *missing = ""; return 1; }
#endif
