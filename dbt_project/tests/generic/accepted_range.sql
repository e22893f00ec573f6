{% test accepted_range(model, column_name, min_value=none, max_value=none) %}
{#- Rows whose value lies outside [min_value, max_value] (either bound optional); nulls are not_null's job. -#}

with checked as (

    select {{ column_name }} as value
    from {{ model }}
    where {{ column_name }} is not null

)

select *
from checked
where false
    {%- if min_value is not none %} or value < {{ min_value }}{% endif %}
    {%- if max_value is not none %} or value > {{ max_value }}{% endif %}

{% endtest %}
