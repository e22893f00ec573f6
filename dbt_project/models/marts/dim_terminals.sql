{{
    config(
        incremental_strategy='delete+insert',
        partition_column=none,
        unique_key='terminal_id',
    )
}}

with transactions as (

    select * from {{ ref('fct_transactions') }}
    {%- if is_incremental() %}
    -- only the terminals whose rows the window (labels included) can have changed, over their whole history
    where terminal_id in (
        select terminal_id from {{ ref('fct_transactions') }}
        where tx_date >= {{ window_start(var('label_delay_days')) }} and tx_date < {{ window_end() }}
    )
    {%- endif %}

),

terminals as (

    select
        terminal_id,
        min(tx_datetime) as first_tx_at,
        max(tx_datetime) as last_tx_at,
        count(*) as tx_count,
        count(distinct customer_id) as customer_count,
        round(sum(tx_amount), 2) as total_amount,
        count(*) filter (where is_fraud) as fraud_tx_count
    from transactions
    group by terminal_id

)

select * from terminals
