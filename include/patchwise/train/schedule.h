#pragma once
// Learning-rate schedules, as a pure function of the step: a resumed run computes the
// same rate at the same step, and nothing but the options needs saving.
//   constant : lr throughout
//   step     : lr * gamma^floor(epoch / step_epochs) (epoch counted from 0)
//   cosine   : from lr down to 0 along half a cosine (Loshchilov & Hutter, no restarts)
//   onecycle : from lr/25 up to lr during the warmup (default: the first 30 % of the
//              steps), then along half a cosine down to lr/25e4 (Smith's one-cycle
//              policy, as PyTorch's OneCycleLR without momentum cycling)
// A warmup of W epochs ramps the rate linearly from lr/W' to the schedule's value over
// the first W' = W * steps_per_epoch steps; the schedule's own progress counts after it.

#include <cstdint>
#include <string>

namespace patchwise {

enum class ScheduleKind { kConstant, kStep, kCosine, kOneCycle };

/// "constant", "step", "cosine", "onecycle"; throws InputError otherwise.
ScheduleKind parse_schedule_kind(const std::string& name);
std::string schedule_kind_name(ScheduleKind kind);

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::kConstant;
  double warmup_epochs = -1;  ///< linear warmup; < 0: none (onecycle: 30 % of the run)
  double step_epochs = 30;    ///< step: epochs between decays
  double gamma = 0.1;         ///< step: the factor of each decay
};

/// Throws InputError for a warmup as long as the run or longer, a step of no epochs,
/// or a gamma outside (0, 1].
void check_schedule_options(const ScheduleOptions& options, int64_t epochs);

/// The rate of step `step` (0-based over the whole run) of `total` steps, with
/// `steps_per_epoch` steps per epoch and peak rate `lr`.
double scheduled_lr(
    const ScheduleOptions& options, double lr, int64_t step, int64_t total,
    int64_t steps_per_epoch);

}  // namespace patchwise
