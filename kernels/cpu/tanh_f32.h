/* tanh in float32 made of arithmetic and selects, so loops over it vectorise (libm's tanhf is a
 * scalar call that cost more than the recurrent kernels' GEMMs): Eigen's rational approximation,
 * odd 13 / even 6 minimax on [-7.9, 7.9], within 5 ulp of the float64 tanh. NaN propagates
 * through the clamps. Modules including it are built with -fno-trapping-math (setup.py): else
 * GCC keeps the clamps as branches, as if a comparison could trap. fl_tanh_f64 is libm's, for
 * the float64 twin of a loop. */
#ifndef FASTLAYERS_TANH_F32_H
#define FASTLAYERS_TANH_F32_H

#include <math.h>

static inline float fl_tanh_f32(float x) {
    const float clamp = 7.90531110763549805f;
    x = x > clamp ? clamp : x;
    x = x < -clamp ? -clamp : x;
    float x2 = x * x;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return x * p / q;
}

static inline double fl_tanh_f64(double x) { return tanh(x); }

#endif
