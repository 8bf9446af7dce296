"""Which prompts a dialplan can speak without call data: these are synthesised ahead of calls."""

from __future__ import annotations


def test_prompts_include_constants_that_steps_set(make_plan) -> None:
    plan = make_plan(
        """\
        name: menu
        variables:
          menu_prompt: How can I help?
        steps:
          start:
            say: "{{ menu_prompt }}"
            goto: again
          again:
            set:
              menu_prompt: Anything else?
              caller_name: "{{ call.id }}"
            say: "Thanks {{ caller_name }}. {{ menu_prompt }}"
            goto: start
        """
    )
    prompts = plan.prompts()
    assert "How can I help?" in prompts
    assert "Anything else?" in prompts
    # A prompt that depends on call data is spoken live, not synthesised ahead.
    assert not any(p.startswith("Thanks") for p in prompts)
