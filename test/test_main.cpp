// test_main.cpp: the Catch2 main, compiled once and linked into both the CPU and the GPU suites.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
