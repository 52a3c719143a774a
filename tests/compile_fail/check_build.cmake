# SPDX-License-Identifier: MIT
# ctest script of tests/compile_fail (cmake -P): builds BUILD_DIR's target OK_TARGET, which must compile, then
# FAIL_TARGET, which must not, and whose compiler output must contain every string of EXPECT (a list separated by
# "|"). A compile-fail test that only checked the failure would pass on any error; the first build and the expected
# text make it fail for the intended reason only.
foreach(var BUILD_DIR OK_TARGET FAIL_TARGET EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "check_build.cmake: ${var} is not set")
  endif()
endforeach()
set(config_args)
if(CONFIG)
  set(config_args --config ${CONFIG})
endif()

execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${OK_TARGET} ${config_args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OK_TARGET} must compile, but the build failed:\n${out}")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${FAIL_TARGET} ${config_args}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
if(rc EQUAL 0)
  message(FATAL_ERROR "${FAIL_TARGET} compiled, but it must not:\n${out}")
endif()
string(REPLACE "|" ";" expected "${EXPECT}")
foreach(text IN LISTS expected)
  string(FIND "${out}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${FAIL_TARGET} failed to compile, but its output does not contain \"${text}\":\n${out}")
  endif()
endforeach()
message(STATUS "${FAIL_TARGET} failed to compile, as it must, with: ${EXPECT}")
